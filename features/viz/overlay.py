"""Drawing shared by the picture commands: upsampled heat maps, mask overlays and titled PNG grids.

Figures are drawn with matplotlib's object API (``Figure`` + Agg canvas), never ``pyplot``, so that
nothing global is touched and no display is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def upsample_map(values: Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A patch-grid map ``[h, w]`` → ``[H, W]`` float32 by bilinear interpolation."""
    grid = torch.as_tensor(np.asarray(values, dtype=np.float32))[None, None]
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def normalize01(values: np.ndarray) -> np.ndarray:
    """Min-max scale to ``[0, 1]`` (a constant map becomes zeros)."""
    values = np.asarray(values, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def colorize(values: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """Values in ``[0, 1]`` → uint8 RGB through a matplotlib colour map."""
    from matplotlib import colormaps

    rgba = colormaps[cmap](np.clip(values, 0.0, 1.0))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def blend(image: np.ndarray, overlay: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``(1 - alpha) · image + alpha · overlay`` for two uint8 RGB images of the same size."""
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * overlay.astype(np.float32)
    return mixed.round().clip(0, 255).astype(np.uint8)


def mask_overlay(image: np.ndarray, mask: np.ndarray, color=(255, 40, 40), alpha: float = 0.5) -> np.ndarray:
    """Tint the pixels of a bool mask in ``color`` over a uint8 RGB image."""
    tinted = image.copy()
    layer = np.broadcast_to(np.asarray(color, dtype=np.uint8), image.shape)
    tinted[mask] = blend(image[mask], layer[mask], alpha)
    return tinted


def save_grid(
    panels: Sequence[np.ndarray],
    path: str | Path,
    titles: Sequence[str] | None = None,
    columns: int | None = None,
    suptitle: str | None = None,
    panel_inches: float = 2.2,
) -> Path:
    """Save uint8 RGB panels (same size or not) as one titled PNG grid; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = columns or len(panels)
    rows = -(-len(panels) // columns)
    aspect = panels[0].shape[0] / panels[0].shape[1]
    title_inches = 0.3 if titles is not None else 0.05
    height = (panel_inches * aspect + title_inches) * rows + (0.4 if suptitle else 0.0)
    figure = Figure(figsize=(panel_inches * columns, height))
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(panels):
            axis.imshow(panels[index], interpolation="nearest")
            if titles is not None:
                axis.set_title(titles[index], fontsize=8)
    if suptitle:
        figure.suptitle(suptitle, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def pad_to_height(image: np.ndarray, height: int) -> np.ndarray:
    """Pad a uint8 RGB image with white rows at the bottom up to ``height``."""
    missing = height - image.shape[0]
    return np.pad(image, ((0, missing), (0, 0), (0, 0)), constant_values=255) if missing > 0 else image
