"""Patch matching between two images: mutual nearest neighbours by cosine similarity (DINOv2 §7.4, Fig. 10).

Patch ``i`` of A and patch ``j`` of B match when ``j`` is the most similar patch of B to ``i`` and ``i``
the most similar patch of A to ``j``. The strongest ``top`` matches are drawn as lines.

Example::

    matches = mutual_nearest_patches(out_a.patch_tokens[0], out_b.patch_tokens[0])
    render_matches(image_a, grid_a, image_b, grid_b, matches[:30], "match.png")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dinolab.features.viz.overlay import pad_to_height


@dataclass(frozen=True)
class PatchMatch:
    """A mutual match: patch index in A, patch index in B (row-major on each grid), cosine similarity."""

    index_a: int
    index_b: int
    similarity: float


def mutual_nearest_patches(features_a: Tensor, features_b: Tensor) -> list[PatchMatch]:
    """All mutual nearest pairs between patch features ``[Na, D]`` and ``[Nb, D]``, most similar first."""
    similarity = F.normalize(features_a.float(), dim=-1) @ F.normalize(features_b.float(), dim=-1).T
    best_b = similarity.argmax(dim=1)  # for each patch of A
    best_a = similarity.argmax(dim=0)  # for each patch of B
    indices_a = torch.arange(features_a.shape[0])
    mutual = best_a[best_b] == indices_a
    pairs = [
        PatchMatch(int(i), int(best_b[i]), float(similarity[i, best_b[i]])) for i in indices_a[mutual].tolist()
    ]
    return sorted(pairs, key=lambda match: -match.similarity)


def patch_centre(index: int, grid_hw: tuple[int, int], image_hw: tuple[int, int]) -> tuple[float, float]:
    """Pixel ``(x, y)`` of the centre of patch ``index`` of a grid stretched over an image."""
    row, col = divmod(index, grid_hw[1])
    return (col + 0.5) * image_hw[1] / grid_hw[1], (row + 0.5) * image_hw[0] / grid_hw[0]


def render_matches(
    image_a: np.ndarray,
    grid_a: tuple[int, int],
    image_b: np.ndarray,
    grid_b: tuple[int, int],
    matches: list[PatchMatch],
    path: str | Path,
    caption: str | None = None,
) -> Path:
    """Images side by side with one coloured line per match; saved as PNG."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = max(image_a.shape[0], image_b.shape[0])
    gap = np.full((height, 10, 3), 255, dtype=np.uint8)
    canvas = np.concatenate([pad_to_height(image_a, height), gap, pad_to_height(image_b, height)], axis=1)
    offset = image_a.shape[1] + gap.shape[1]
    figure = Figure(figsize=(8, 8 * height / canvas.shape[1] + (0.4 if caption else 0.1)))
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    axis.imshow(canvas)
    axis.axis("off")
    palette = colormaps["hsv"]
    for rank, match in enumerate(matches):
        xa, ya = patch_centre(match.index_a, grid_a, image_a.shape[:2])
        xb, yb = patch_centre(match.index_b, grid_b, image_b.shape[:2])
        colour = palette(rank / max(len(matches), 1))
        axis.plot([xa, xb + offset], [ya, yb], color=colour, linewidth=0.9)
        axis.scatter([xa, xb + offset], [ya, yb], color=[colour], s=6)
    if caption:
        axis.set_title(caption, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
