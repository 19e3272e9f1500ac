"""Exponential moving average teacher (DINO §3.1 "teacher network", BYOL-style momentum encoder).

``θ_t ← m·θ_t + (1 − m)·θ_s`` with ``m`` following a cosine schedule from 0.992 (DINOv2) to 1.
Runs as two fused ``_foreach`` kernels over all parameters; DTensor parameters (FSDP2) are updated
on their local shards, which requires student and teacher to be sharded the same way.

Example::

    update_teacher(list(student.parameters()), list(teacher.parameters()), momentum=0.996)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

try:  # torch.distributed.tensor is absent on builds without distributed support
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover
    DTensor = None


def _local(tensor: Tensor) -> Tensor:
    if DTensor is not None and isinstance(tensor, DTensor):
        return tensor.to_local()
    return tensor


@torch.no_grad()
def update_teacher(
    student_params: Sequence[Tensor], teacher_params: Sequence[Tensor], momentum: float
) -> None:
    """In-place ``teacher = momentum·teacher + (1 − momentum)·student`` over paired parameter lists."""
    if len(student_params) != len(teacher_params):
        raise ValueError(
            f"student has {len(student_params)} parameters but teacher has {len(teacher_params)}"
        )
    if not student_params:
        return
    teacher = [_local(p.detach()) for p in teacher_params]
    student = [_local(p.detach()) for p in student_params]
    for s, t in zip(student, teacher):
        if s.shape != t.shape:
            raise ValueError(f"parameter shape mismatch: student {tuple(s.shape)} vs teacher {tuple(t.shape)}")
    torch._foreach_mul_(teacher, momentum)
    torch._foreach_add_(teacher, student, alpha=1.0 - momentum)
