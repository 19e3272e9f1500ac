"""A linear probe on dense features, and the loop that fits it on frozen, precomputed features.

The DINOv2 linear dense heads (§7.4) upsample the patch features bilinearly by 4, then apply batch
normalisation and a 1×1 convolution. A per-pixel affine map commutes with bilinear upsampling (its weights
sum to one), so the head here normalises and classifies on the patch grid and upsamples the K outputs
instead of the C ≫ K inputs: the same function (batch statistics aside: they are taken over grid cells),
at a fraction of the cost. Non-linear steps (depth bins, softmax) come after the ×4 upsampling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DenseLinearHead(nn.Module):
    """``[B, C, h, w]`` features → ``[B, K, H, W]`` outputs: BatchNorm, 1×1 conv, ×4 bilinear, resize."""

    def __init__(self, in_channels: int, out_channels: int, upsample: int = 4) -> None:
        super().__init__()
        self.upsample = upsample
        self.norm = nn.BatchNorm2d(in_channels)
        self.classifier = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, features: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Outputs at ``size``, or at 4× the patch grid when ``size`` is None."""
        x = self.classifier(self.norm(features))
        x = F.interpolate(x, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        return x if size is None else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def fit_head(
    head: nn.Module,
    features: Sequence[Tensor],
    targets: Sequence[Tensor],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    steps: int = 200,
    lr: float = 1e-2,
    progress: bool = False,
) -> list[float]:
    """Fit ``head`` on (feature map, target) pairs, one image per step in turn; returns the loss per step.

    ``loss_fn(head_output, target)`` receives the output resized to the target's ``[H, W]``.
    """
    from tqdm import tqdm

    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    head.train()
    losses = []
    for step in tqdm(range(steps), desc="fitting probe", disable=not progress, leave=False):
        index = step % len(features)
        if index == 0 and len(features) > 1:
            order = torch.randperm(len(features)).tolist()
            features = [features[i] for i in order]
            targets = [targets[i] for i in order]
        with torch.enable_grad():
            output = head(features[index], tuple(targets[index].shape[-2:]))
            loss = loss_fn(output, targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    head.eval()
    return losses
