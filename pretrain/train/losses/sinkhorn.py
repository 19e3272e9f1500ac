"""Sinkhorn-Knopp teacher targets (SwAV §3.1, adopted by DINOv2 §4 in place of centering).

The teacher scores ``Q = exp(logits / τ)`` (samples × prototypes) are alternately rescaled so that every
prototype receives the same total mass ``1/K`` and every sample the mass ``1/B``; after the last step
each row is a probability vector over prototypes. Under ``torch.distributed`` the sums run over the
global batch (all-reduced), so every process sees the same equipartition constraint.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(tensor: Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> Tensor:
    if _distributed():
        dist.all_reduce(tensor, op=op)
    return tensor


@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: Tensor,
    teacher_temp: float,
    n_iterations: int = 3,
    n_samples: Tensor | int | None = None,
) -> Tensor:
    """Balanced soft assignments ``[B, K]`` of ``teacher_logits [B, K]`` (rows sum to 1).

    ``n_samples`` is this process's number of valid rows (e.g. its count of masked patches for iBOT;
    default: all rows); it is summed over processes like every other sum here, so callers pass local
    values only. Computed in fp32; the global maximum logit is subtracted before ``exp`` (it cancels
    in the first normalisation) to avoid overflow at small temperatures.
    """
    logits = teacher_logits.float() / teacher_temp
    local_peak = logits.max() if logits.numel() else logits.new_tensor(float("-inf"))
    peak = _all_reduce(local_peak.reshape(1).clone(), dist.ReduceOp.MAX)  # every rank joins, even if empty
    q = torch.exp(logits - peak).t()  # [K, B]
    num_prototypes = q.shape[0]
    local_samples = q.shape[1] if n_samples is None else n_samples
    n_samples_tensor = _all_reduce(torch.as_tensor(local_samples, dtype=q.dtype, device=q.device).reshape(1).clone())

    tiny = torch.finfo(q.dtype).tiny  # a prototype or sample whose mass underflowed stays at 0

    q /= _all_reduce(q.sum().reshape(1))
    for _ in range(n_iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True)).clamp_min(tiny)  # each prototype: mass 1/K
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True).clamp_min(tiny)  # each sample: mass 1/B
        q /= n_samples_tensor
    q *= n_samples_tensor
    return q.t()
