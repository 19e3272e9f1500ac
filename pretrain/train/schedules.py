"""Per-iteration schedules of the DINOv2 recipe (DINOv2 §4 and appendix "training details").

* learning rate: linear warm-up from 0, then cosine to ``min_lr``; base lr scaled with the batch size
  (:func:`scaled_lr`: ``sqrt(batch/1024)`` for DINOv2, ``batch/256`` for DINO v1);
* weight decay: cosine 0.04 → 0.4; teacher momentum: cosine 0.992 → 1;
* teacher temperature: linear warm-up 0.04 → 0.07 over 30 epochs, then constant;
* last-layer lr: the lr schedule with 0 during the first ``freeze_last_layer_epochs``.

Example::

    sched = TrainingSchedules.build(total_iters=12500, iters_per_epoch=1250, lr=scaled_lr(4e-3, 256),
        min_lr=1e-6, warmup_epochs=1, wd=0.04, wd_end=0.4, momentum=0.992, momentum_end=1.0,
        teacher_temp=0.04, teacher_temp_end=0.07, teacher_temp_warmup_epochs=3, freeze_last_layer_epochs=1)
    values = sched.at(step)   # {"lr": ..., "weight_decay": ..., "teacher_momentum": ..., ...}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor


def cosine_schedule(
    base: float, final: float, total_iters: int, warmup_iters: int = 0, warmup_start: float = 0.0
) -> Tensor:
    """``[total_iters]`` float64 values: linear ``warmup_start → base`` then half-cosine ``base → final``.

    Warm-up step ``i < W`` has ``warmup_start + (base − warmup_start)·i/W``; step ``W`` is ``base``
    and the last step is exactly ``final``. A warm-up longer than ``total_iters`` is cut short.
    """
    if total_iters < 0 or warmup_iters < 0:
        raise ValueError("total_iters and warmup_iters must be non-negative")
    steps = torch.arange(min(warmup_iters, total_iters), dtype=torch.float64)
    warmup = warmup_start + (base - warmup_start) * steps / max(warmup_iters, 1)  # truncated if too long
    n_cosine = total_iters - len(warmup)
    progress = torch.arange(n_cosine, dtype=torch.float64) / max(n_cosine - 1, 1)
    cosine = final + 0.5 * (base - final) * (1 + torch.cos(math.pi * progress))
    return torch.cat([warmup, cosine])


def scaled_lr(base_lr: float, global_batch: int, rule: str = "sqrt") -> float:
    """Batch-size scaling of the base lr: ``"sqrt"`` (DINOv2, ref 1024) or ``"linear"`` (DINO, ref 256)."""
    if rule == "sqrt":
        return base_lr * math.sqrt(global_batch / 1024)
    if rule == "linear":
        return base_lr * global_batch / 256
    raise ValueError(f"unknown lr scaling rule {rule!r}; use 'sqrt' or 'linear'")


@dataclass(frozen=True)
class TrainingSchedules:
    """One value per iteration for every scheduled hyper-parameter (each a ``[total_iters]`` tensor)."""

    lr: Tensor
    weight_decay: Tensor
    teacher_momentum: Tensor
    teacher_temp: Tensor
    last_layer_lr: Tensor

    @classmethod
    def build(
        cls,
        total_iters: int,
        iters_per_epoch: int,
        lr: float,
        min_lr: float,
        warmup_epochs: float,
        wd: float,
        wd_end: float,
        momentum: float,
        momentum_end: float,
        teacher_temp: float,
        teacher_temp_end: float,
        teacher_temp_warmup_epochs: float,
        freeze_last_layer_epochs: float,
    ) -> "TrainingSchedules":
        """Schedules of the DINOv2 recipe; ``teacher_temp`` is the warm-up start, ``teacher_temp_end`` the plateau."""
        warmup_iters = int(warmup_epochs * iters_per_epoch)
        lr_values = cosine_schedule(lr, min_lr, total_iters, warmup_iters=warmup_iters)
        temp_warmup = min(int(teacher_temp_warmup_epochs * iters_per_epoch), total_iters)
        temp_values = torch.cat(
            [
                cosine_schedule(teacher_temp_end, teacher_temp_end, temp_warmup, temp_warmup, teacher_temp),
                torch.full((total_iters - temp_warmup,), teacher_temp_end, dtype=torch.float64),
            ]
        )
        last_layer = lr_values.clone()
        last_layer[: int(freeze_last_layer_epochs * iters_per_epoch)] = 0.0
        return cls(
            lr=lr_values,
            weight_decay=cosine_schedule(wd, wd_end, total_iters),
            teacher_momentum=cosine_schedule(momentum, momentum_end, total_iters),
            teacher_temp=temp_values,
            last_layer_lr=last_layer,
        )

    def __len__(self) -> int:
        return len(self.lr)

    def at(self, step: int) -> dict[str, float]:
        """Values at ``step`` (steps past the end keep the last value, e.g. for a final extra step)."""
        if step < 0:
            raise IndexError(f"step must be >= 0, got {step}")
        index = min(step, len(self) - 1)
        return {f.name: float(getattr(self, f.name)[index]) for f in fields(self)}
