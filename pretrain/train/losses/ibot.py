"""iBOT masked-patch self-distillation loss (iBOT §3.2; DINOv2 §4 "patch-level objective").

For every patch masked in the student's input, the student's patch-head distribution is pulled
towards the teacher's distribution for the same (unmasked) patch. Each masked patch is weighted by
``1 / (number of masked patches in its image)`` so every masked image contributes equally:

    L = −(1/N) Σ_images Σ_{masked p} w_p Σ_k P_t[p, k] log P_s[p, k],   w_p = 1 / m_image

Normalisation ``N``: by default the number of masked images (``Σ w``), i.e. a per-image mean over its
masked patches averaged over masked images. The released DINOv2 code instead divides by the number of
*all* global crops in the batch (masked or not), which scales the loss by the masking probability
(0.5); pass ``n_images=`` to get that convention.

Example::

    loss_fn = IBOTPatchLoss(patch_out_dim=65536)
    targets = loss_fn.sinkhorn_knopp_teacher(t_masked, 0.07, n_masked_patches_tensor=torch.tensor(M))
    loss = loss_fn.forward_masked(s_masked, targets, masks_weight(masks))
    loss_fn.update_center(t_masked)   # only when using softmax-centering targets
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinolab.pretrain.train.losses.dino import ema_center_update
from dinolab.pretrain.train.losses.sinkhorn import sinkhorn_knopp


class IBOTPatchLoss(nn.Module):
    """Weighted cross-entropy over masked patch tokens with DINO-style teacher targets."""

    def __init__(
        self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9
    ) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, patch_out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """``softmax((t − center) / τ_t)`` for teacher patch logits ``[M, K]``."""
        return F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self,
        teacher_logits: Tensor,
        teacher_temp: float,
        n_masked_patches_tensor: Tensor | int | None = None,
        n_iterations: int = 3,
    ) -> Tensor:
        """Sinkhorn-Knopp targets over the masked patches (``n_masked_patches_tensor``: this process's count)."""
        return sinkhorn_knopp(
            teacher_logits, teacher_temp, n_iterations=n_iterations, n_samples=n_masked_patches_tensor
        )

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        """EMA of the teacher's mean patch logits (all-reduced); call after the loss."""
        ema_center_update(self.center, teacher_logits, self.center_momentum)

    def forward_masked(
        self,
        student_patch_logits: Tensor,
        teacher_patch_probs: Tensor,
        masks_weight: Tensor,
        n_images: int | Tensor | None = None,
    ) -> Tensor:
        """Loss over ``M`` masked patches: logits/probs ``[M, K]``, ``masks_weight [M]``."""
        if student_patch_logits.shape[0] == 0:
            return student_patch_logits.sum() * 0.0
        log_probs = F.log_softmax(student_patch_logits.float() / self.student_temp, dim=-1)
        per_patch = -(teacher_patch_probs * log_probs).sum(dim=-1)
        weights = masks_weight.float()
        normaliser = weights.sum() if n_images is None else torch.as_tensor(n_images, dtype=torch.float32)
        return (per_patch * weights).sum() / normaliser.clamp(min=1.0)
