"""Segment by similarity to a reference object's patch features (one-shot, no training).

The reference mask is brought to the patch grid by area (each patch weighted by the fraction of it the
mask covers); the foreground prototype is the weighted mean of the reference's L2-normalised patch
features, the background prototype the mean weighted by the complement. Two methods:

- ``"similarity"``: cosine similarity of each target patch to the foreground prototype, upsampled
  bilinearly, thresholded (Otsu's method by default, or a fraction of the map's range);
- ``"fgbg"``: each target patch goes to the nearer prototype: the map is ``cos(fg) - cos(bg)``,
  thresholded at 0.

Example::

    fg, bg = prototypes(ref_out.patch_tokens[0], patch_coverage(mask, ref_out.grid_hw))
    result = segment_target(tgt_out.patch_tokens[0], tgt_out.grid_hw, fg, bg, image_hw=(480, 640))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dinolab.features.viz.overlay import upsample_map

Method = Literal["similarity", "fgbg"]


@dataclass
class SegmentResult:
    """Score map ``[H, W]`` (higher = more like the reference object), its threshold and the mask."""

    score_map: np.ndarray
    threshold: float
    mask: np.ndarray


def patch_coverage(mask: np.ndarray, grid_hw: tuple[int, int]) -> Tensor:
    """Fraction of each patch covered by a bool image mask, ``[h·w]`` in ``[0, 1]`` (area pooling)."""
    dense = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    return F.adaptive_avg_pool2d(dense, grid_hw).reshape(-1)


def prototypes(features: Tensor, coverage: Tensor) -> tuple[Tensor, Tensor]:
    """Area-weighted means of normalised patch features ``[N, D]``: (foreground, background) ``[D]``."""
    if coverage.sum() <= 0:
        raise ValueError("the reference mask covers no patch: nothing to learn the object from")
    if (1 - coverage).sum() <= 0:
        raise ValueError("the reference mask covers the whole image: no background to compare with")
    normed = F.normalize(features.float(), dim=-1)
    weights = coverage.to(normed)
    foreground = (weights[:, None] * normed).sum(0) / weights.sum()
    background = ((1 - weights)[:, None] * normed).sum(0) / (1 - weights).sum()
    return foreground, background


def _threshold(score_map: np.ndarray, threshold: float | None) -> float:
    if threshold is not None:
        low, high = float(score_map.min()), float(score_map.max())
        return low + threshold * (high - low)
    from skimage.filters import threshold_otsu

    if float(score_map.max()) == float(score_map.min()):
        return float(score_map.max())
    return float(threshold_otsu(score_map))


def segment_target(
    features: Tensor,
    grid_hw: tuple[int, int],
    foreground: Tensor,
    background: Tensor,
    image_hw: tuple[int, int],
    method: Method = "similarity",
    threshold: float | None = None,
) -> SegmentResult:
    """Segment one target from its patch features ``[h·w, D]`` (see module doc).

    ``threshold`` (similarity method): fraction of the score range, ``None`` for Otsu. The fgbg method
    always cuts at 0 (the patch is nearer to the foreground prototype).
    """
    normed = F.normalize(features.float(), dim=-1)
    to_foreground = normed @ F.normalize(foreground, dim=0)
    if method == "similarity":
        patch_scores = to_foreground
    elif method == "fgbg":
        patch_scores = to_foreground - normed @ F.normalize(background, dim=0)
    else:
        raise ValueError(f"unknown method {method!r}; use 'similarity' or 'fgbg'")
    score_map = upsample_map(patch_scores.reshape(grid_hw).cpu(), image_hw)
    cut = 0.0 if method == "fgbg" else _threshold(score_map, threshold)
    return SegmentResult(score_map, cut, score_map > cut)


def intersection_over_union(prediction: np.ndarray, target: np.ndarray) -> float:
    """``|P ∩ T| / |P ∪ T|`` of two bool masks (1.0 when both are empty)."""
    if prediction.shape != target.shape:
        raise ValueError(f"masks differ in shape: {prediction.shape} vs {target.shape}")
    union = np.logical_or(prediction, target).sum()
    return float(np.logical_and(prediction, target).sum() / union) if union else 1.0
