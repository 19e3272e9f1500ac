"""The picture of a one-shot segmentation: reference | target | score map | predicted mask | truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dinolab.features.segment.reference import SegmentResult
from dinolab.features.viz.overlay import blend, colorize, mask_overlay, normalize01, save_grid


def render_segmentation(
    reference: np.ndarray,
    reference_mask: np.ndarray,
    target: np.ndarray,
    result: SegmentResult,
    path: str | Path,
    target_mask: np.ndarray | None = None,
    iou: float | None = None,
    caption: str | None = None,
) -> Path:
    """Save the panels as one PNG row (the ground-truth panel only when a target mask is given)."""
    panels = [
        mask_overlay(reference, reference_mask, color=(40, 200, 40)),
        target,
        blend(target, colorize(normalize01(result.score_map)), 0.6),
        mask_overlay(target, result.mask),
    ]
    titles = ["reference + mask", "target", "similarity to reference", f"mask (cut {result.threshold:.3f})"]
    if target_mask is not None:
        panels.append(mask_overlay(target, target_mask, color=(40, 200, 40)))
        titles.append("ground truth" + (f" (IoU {iou:.2f})" if iou is not None else ""))
    return save_grid(panels, path, titles, suptitle=caption)
