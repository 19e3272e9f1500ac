"""Minimal process-group helpers: single process by default, ``torchrun`` when its variables are set.

Every helper is a no-op (or the identity) without a process group, so training code calls them
unconditionally. The collective ones must be called by every rank at the same point.

Example::

    init_from_env()          # no-op without torchrun
    loss = all_reduce_mean(loss.detach())
    stop, = any_rank([time_is_up])   # the same decision on every rank
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    """True when ``torchrun`` (or an equivalent launcher) set ``RANK`` and ``WORLD_SIZE``."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env() -> bool:
    """Join the process group described by the torchrun variables; returns whether one is active."""
    if is_distributed():
        return True
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) < 2:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over all processes (the tensor itself when single-process)."""
    if not is_distributed():
        return tensor
    reduced = tensor.clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / world_size()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum of ``tensor`` over all processes (a copy; the tensor itself when single-process)."""
    if not is_distributed():
        return tensor
    reduced = tensor.clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced


def any_rank(flags: Sequence[bool], device: torch.device | str = "cpu") -> list[bool]:
    """Each flag, true on every rank when it is true on at least one (one collective decision)."""
    if not is_distributed():
        return list(flags)
    values = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value > 0) for value in values.tolist()]


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_gather_rows(tensor: Tensor) -> Tensor:
    """Concatenate every rank's ``tensor [n_r, ...]`` in rank order (``n_r`` may differ by rank)."""
    if not is_distributed():
        return tensor
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([g[: int(c.item())] for g, c in zip(gathered, counts)])


def barrier() -> None:
    if is_distributed():
        dist.barrier()
