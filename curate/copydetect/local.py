"""Local features, the default copy descriptor: RootSIFT keypoints of a grey image at a fixed short side.

SIFT is invariant to scale, rotation and affine intensity changes, so crops, rotations, resizing, padding,
frames and colour changes keep many keypoints; it is not mirror-invariant, so each image is also
described mirrored (:func:`describe`). RootSIFT (Arandjelović & Zisserman 2012: L1-normalise, square
root) makes L2 distances behave like the Hellinger kernel. The grey analysis image is kept for the
photometric half of :mod:`.verify`::

    features = describe(pil_image)          # LocalFeatures (+ .mirror)
    features.descriptors.shape              # [m, 128] float32, m <= max_features
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

ANALYSIS_SIDE = 256
"""Short side (px) every image is analysed at: small images are upscaled, large ones reduced."""
MAX_LONG_SIDE = 512
"""Cap on the long side, so panoramas stay cheap."""
MAX_FEATURES = 400
DESCRIPTOR_DIM = 128


@dataclass
class LocalFeatures:
    """Keypoints ``xy`` ``[m, 2]`` (pixels of ``gray``), RootSIFT ``descriptors`` ``[m, 128]`` and the grey image;
    ``template``: the region (coarse mask, :mod:`.templates`) that recurs across the lake, when one is known."""

    xy: np.ndarray
    descriptors: np.ndarray
    gray: np.ndarray
    mirror: "LocalFeatures | None" = None
    template: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.xy)


def analysis_gray(image: Image.Image, side: int = ANALYSIS_SIDE, max_long: int = MAX_LONG_SIDE) -> np.ndarray:
    """The grey uint8 image at short side ``side`` (long side at most ``max_long``), aspect kept."""
    width, height = image.size
    scale = min(side / max(1, min(width, height)), max_long / max(1, max(width, height)))
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    return np.asarray(image.convert("L").resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT: L1-normalise each SIFT descriptor, then take the element-wise square root (unit L2 norm)."""
    descriptors = np.asarray(descriptors, dtype=np.float32)
    descriptors = descriptors / (np.abs(descriptors).sum(axis=1, keepdims=True) + 1e-7)
    return np.sqrt(descriptors)


def extract(gray: np.ndarray, max_features: int = MAX_FEATURES) -> LocalFeatures:
    """SIFT keypoints of ``gray`` (the ``max_features`` strongest) with RootSIFT descriptors."""
    sift = cv2.SIFT_create(nfeatures=max_features, contrastThreshold=0.02)
    keypoints, descriptors = sift.detectAndCompute(gray, None)
    if descriptors is None or not keypoints:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, DESCRIPTOR_DIM), np.float32), gray)
    keypoints, descriptors = keypoints[:max_features], descriptors[:max_features]
    xy = np.array([kp.pt for kp in keypoints], dtype=np.float32)
    return LocalFeatures(xy, root_sift(descriptors), gray)


def describe(image: Image.Image, side: int = ANALYSIS_SIDE, max_features: int = MAX_FEATURES) -> LocalFeatures:
    """Features of ``image`` and (``.mirror``) of its horizontal mirror, both at short side ``side``."""
    gray = analysis_gray(image, side)
    features = extract(gray, max_features)
    features.mirror = extract(np.ascontiguousarray(gray[:, ::-1]), max_features)
    return features
