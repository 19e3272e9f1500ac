"""Monocular depth from frozen features: a linear head over 256 depth bins, or a direct regression.

Classification head (DINOv2 §7.4, following AdaBins, Bhat et al. 2021): the depth range is split into
256 uniform bins; the head's logits become bin weights by linear normalisation
``p_k = (relu(z_k) + ε) / Σ_j (relu(z_j) + ε)`` and the depth is ``Σ_k p_k · c_k`` over bin centres
``c_k``. The regression head reads one channel as log depth around the range's geometric centre,
``d = sqrt(low · high) · exp(z)``. Both are trained with
the scale-invariant log loss (Eigen et al. 2014) ``sqrt(mean(g²) − λ · mean(g)²)``, ``g = log d̂ − log d``,
``λ = 0.85``. Metrics: RMSE, AbsRel ``mean(|d̂ − d| / d)``, δ1 ``mean(max(d̂/d, d/d̂) < 1.25)``. Pixels whose
target is not finite and positive are ignored everywhere.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinolab.features.probes.head import DenseLinearHead

HeadKind = Literal["classification", "regression"]
NUM_BINS = 256
NORMALISATION_EPS = 0.1
SCALE_INVARIANCE = 0.85


def valid_depth(target: Tensor) -> Tensor:
    """Bool mask of usable target pixels (finite and positive)."""
    return torch.isfinite(target) & (target > 0)


@dataclass(frozen=True)
class DepthRange:
    """Depth interval the head predicts in: 0.5th–99.5th percentile of the training targets (robust to
    the stray far readings of depth sensors)."""

    low: float
    high: float

    @classmethod
    def of(cls, targets: list[Tensor]) -> "DepthRange":
        values = torch.cat([t[valid_depth(t)] for t in targets])
        if values.numel() == 0:
            raise ValueError("no valid (finite, positive) depth values in the training targets")
        low, high = (float(v) for v in np.percentile(values.cpu().numpy(), [0.5, 99.5]))
        return cls(low, high if high > low else low + 1.0)


class DepthProbe(nn.Module):
    """Dense features ``[B, C, h, w]`` → depth ``[B, H, W]`` (see module doc)."""

    def __init__(self, in_channels: int, depth_range: DepthRange, head: HeadKind = "classification") -> None:
        super().__init__()
        self.kind = head
        self.depth_range = depth_range
        out_channels = NUM_BINS if head == "classification" else 1
        self.head = DenseLinearHead(in_channels, out_channels)
        centres = torch.linspace(depth_range.low, depth_range.high, NUM_BINS)
        self.register_buffer("bin_centres", centres, persistent=False)

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        """Depth at 4× the patch grid, resized bilinearly to ``size``."""
        output = self.head(features)
        if self.kind == "classification":
            weights = torch.relu(output) + NORMALISATION_EPS
            weights = weights / weights.sum(dim=1, keepdim=True)
            depth = torch.einsum("bkhw,k->bhw", weights, self.bin_centres)
        else:  # log depth, linear in the features: the log loss is then convex in the head's weights
            centre = math.sqrt(self.depth_range.low * self.depth_range.high)
            depth = centre * torch.exp(output[:, 0].clamp(-20.0, 20.0))
        return F.interpolate(depth[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def scale_invariant_log_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """``sqrt(mean(g²) − 0.85 · mean(g)²)`` over valid pixels, ``g = log prediction − log target``."""
    valid = valid_depth(target) & (prediction > 0)
    if not valid.any():
        return prediction.sum() * 0.0
    g = torch.log(prediction[valid]) - torch.log(target[valid])
    return torch.sqrt((g.pow(2).mean() - SCALE_INVARIANCE * g.mean().pow(2)).clamp_min(1e-12))


def depth_metrics(prediction: Tensor, target: Tensor) -> dict[str, float]:
    """RMSE, AbsRel and δ1 (< 1.25) over the valid pixels of any number of images."""
    valid = valid_depth(target)
    if not valid.any():
        raise ValueError("no valid depth pixels to evaluate on")
    predicted, actual = prediction[valid].double().clamp_min(1e-12), target[valid].double()
    ratio = torch.maximum(predicted / actual, actual / predicted)
    return {
        "rmse": float(torch.sqrt(((predicted - actual) ** 2).mean())),
        "abs_rel": float(((predicted - actual).abs() / actual).mean()),
        "delta1": float((ratio < 1.25).double().mean()),
    }
