"""DINO image-level self-distillation loss (DINO §3.1 eq. 1–2; DINOv2 §4 "image-level objective").

The student's prototype distribution for every crop is pulled towards the teacher's distribution for
every *other* global crop: ``L = mean over pairs (s, t), s ≠ t, of −Σ_k P_t[k] log P_s[k]`` with
``P_s = softmax(s / τ_s)``. Teacher targets come from :meth:`DINOLoss.softmax_center_teacher` (DINO's
centering and sharpening) or :meth:`DINOLoss.sinkhorn_knopp_teacher` (DINOv2's default).

The centre is never updated as a side effect: call :meth:`DINOLoss.update_center` yourself after the
loss, with the same teacher logits.

Example::

    loss_fn = DINOLoss(out_dim=65536)
    targets = [loss_fn.softmax_center_teacher(t, teacher_temp=0.04) for t in teacher_logits]
    loss = loss_fn(student_logits, targets)    # student: globals first, then locals
    loss_fn.update_center(torch.cat(teacher_logits))
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from dinolab.pretrain.train.losses.sinkhorn import sinkhorn_knopp


@torch.no_grad()
def ema_center_update(center: Tensor, teacher_logits: Tensor, momentum: float) -> None:
    """``center ← m·center + (1 − m)·mean(teacher_logits)`` over all rows of the global batch."""
    logits = teacher_logits.reshape(-1, center.shape[-1]).float()
    batch_sum = logits.sum(dim=0, keepdim=True)
    count = torch.tensor(float(logits.shape[0]), device=logits.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(batch_sum)
        dist.all_reduce(count)
    center.mul_(momentum).add_(batch_sum / count, alpha=1.0 - momentum)


class DINOLoss(nn.Module):
    """Cross-entropy between teacher targets and student predictions over all cross-crop pairs."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """``softmax((t − center) / τ_t)`` (DINO eq. for the teacher with centering, §3.1)."""
        return F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_logits: Tensor, teacher_temp: float, n_iterations: int = 3
    ) -> Tensor:
        """Sinkhorn-Knopp targets (DINOv2 §4); does not use the centre."""
        return sinkhorn_knopp(teacher_logits, teacher_temp, n_iterations=n_iterations)

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        """EMA of the teacher's batch-mean logits (all-reduced); call once per step after the loss."""
        ema_center_update(self.center, teacher_logits, self.center_momentum)

    def forward(self, student_logits: list[Tensor], teacher_probs: list[Tensor]) -> Tensor:
        """Mean over (student crop, teacher crop) pairs of the per-sample cross-entropy.

        ``student_logits[i]`` and ``teacher_probs[j]`` are ``[B, K]``; the student list starts with the
        global crops in the teacher's order, so pair ``(i, i)`` is skipped (same view).
        """
        if len(student_logits) * len(teacher_probs) <= min(len(student_logits), len(teacher_probs)):
            raise ValueError("DINOLoss needs at least one (student, teacher) pair of different crops")
        log_probs = F.log_softmax(torch.stack(student_logits).float() / self.student_temp, dim=-1)  # [S, B, K]
        targets = torch.stack(teacher_probs).to(log_probs.dtype)  # [T, B, K]
        # pair_loss[t, s] = −Σ_b Σ_k P_t[b, k] log P_s[b, k]: one batched contraction for all pairs.
        pair_loss = -torch.einsum("tbk,sbk->ts", targets, log_probs)
        same_view = torch.eye(*pair_loss.shape, dtype=torch.bool, device=pair_loss.device)
        n_pairs = pair_loss.numel() - int(same_view.sum())
        batch_size = log_probs.shape[1]
        return pair_loss.masked_fill(same_view, 0.0).sum() / (n_pairs * batch_size)
