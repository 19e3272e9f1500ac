"""FLOP counting and the machine's fp32 matmul peak, shared by the benchmarks that report MFU.

MFU = counted FLOPs / measured seconds / peak FLOP/s, with the peak measured in the same run and with
the same thread count, so a busy machine lowers both sides alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)


# FlopCounterMode knows the CUDA attention kernels but not the CPU flash kernel; count it the same way.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def count_flops(function: Callable[[], Any]) -> int:
    """FLOPs of one call of ``function`` (matmuls, convolutions and attention, as FlopCounterMode counts)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        function()
    return counter.get_total_flops()


def measure_matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 matmul FLOP/s over ``repeats`` products of two ``n × n`` matrices."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best
