"""PCA of patch features as colours, after separating the foreground (DINOv2, Oquab et al. 2024, Fig. 1, §7.4).

Two PCAs over the patches of all images jointly, so that colours mean the same across images:

1. the first principal component, thresholded, splits foreground from background (the side covering
   fewer image-border patches is called foreground, as objects rarely fill the border);
2. a PCA of the foreground patches only; its first three components, min-max scaled, are RGB.

Example::

    result = pca_of_patches([out.patch_tokens[0] for out in outputs], grids)
    result.foreground[0]  # bool [h, w];  result.rgb[0]  # float [h, w, 3] in [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from dinolab.features.viz.overlay import colorize, normalize01, save_grid


@dataclass
class PatchPca:
    """Per image: first component ``[h, w]``, foreground ``[h, w]`` bool, colours ``[h, w, 3]`` in [0, 1]."""

    first_component: list[np.ndarray]
    foreground: list[np.ndarray]
    rgb: list[np.ndarray]
    threshold: float


def _border(grid_hw: tuple[int, int]) -> np.ndarray:
    border = np.zeros(grid_hw, dtype=bool)
    border[[0, -1], :] = True
    border[:, [0, -1]] = True
    return border.reshape(-1)


def pca_of_patches(
    features: Sequence[Tensor | np.ndarray],
    grids: Sequence[tuple[int, int]],
    threshold: float | None = None,
    separate_foreground: bool = True,
) -> PatchPca:
    """Joint two-stage PCA of patch features ``[h·w, D]`` per image (see module doc).

    ``threshold`` applies to the first component min-max scaled to ``[0, 1]`` over all images; ``None``
    picks it by Otsu's method. ``separate_foreground=False`` colours all patches with one PCA.
    """
    from sklearn.decomposition import PCA
    from skimage.filters import threshold_otsu

    arrays = [
        f.detach().float().cpu().numpy() if isinstance(f, Tensor) else np.asarray(f, dtype=np.float32)
        for f in features
    ]
    for array, grid in zip(arrays, grids):
        if array.shape[0] != grid[0] * grid[1]:
            raise ValueError(f"{array.shape[0]} patches do not fill a {grid[0]}x{grid[1]} grid")
    stacked = np.concatenate(arrays)
    if stacked.shape[0] < 4:
        raise ValueError("PCA needs at least 4 patches")
    first = normalize01(PCA(n_components=1).fit_transform(stacked)[:, 0])
    if separate_foreground:
        cut = float(threshold_otsu(first)) if threshold is None else float(threshold)
        above = first > cut
        border = np.concatenate([_border(grid) for grid in grids])
        foreground = above if above[border].mean() <= (~above)[border].mean() else ~above
        if foreground.sum() < 3:  # degenerate split: colour everything
            foreground = np.ones_like(foreground)
    else:
        cut, foreground = float("nan"), np.ones(stacked.shape[0], dtype=bool)
    components = min(3, int(foreground.sum()) - 1, stacked.shape[1])
    colours = np.zeros((stacked.shape[0], 3), dtype=np.float32)
    projected = PCA(n_components=components).fit_transform(stacked[foreground])
    for channel in range(components):
        colours[foreground, channel] = normalize01(projected[:, channel])

    result = PatchPca([], [], [], cut)
    start = 0
    for grid in grids:
        stop = start + grid[0] * grid[1]
        result.first_component.append(first[start:stop].reshape(grid))
        result.foreground.append(foreground[start:stop].reshape(grid))
        result.rgb.append(colours[start:stop].reshape(*grid, 3))
        start = stop
    return result


def _nearest_upscale(grid_image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows = (np.arange(size[0]) * grid_image.shape[0] // size[0]).clip(0, grid_image.shape[0] - 1)
    cols = (np.arange(size[1]) * grid_image.shape[1] // size[1]).clip(0, grid_image.shape[1] - 1)
    return grid_image[rows][:, cols]


def render_pca(images: Sequence[np.ndarray], result: PatchPca, path: str | Path, caption: str | None = None) -> Path:
    """One row per image: input | first component | foreground | PCA colours (patch-sharp)."""
    panels, titles = [], []
    for image, first, mask, rgb in zip(images, result.first_component, result.foreground, result.rgb):
        size = image.shape[:2]
        panels += [
            image,
            _nearest_upscale(colorize(first, "viridis"), size),
            _nearest_upscale((mask[..., None] * np.array([255, 255, 255])).astype(np.uint8), size),
            _nearest_upscale((rgb * 255).round().astype(np.uint8), size),
        ]
        split = "all patches" if np.isnan(result.threshold) else f"foreground (cut {result.threshold:.2f})"
        titles += ["input", "PCA component 1", split, "3-component PCA → RGB"]
    return save_grid(panels, path, titles, columns=4, suptitle=caption)
