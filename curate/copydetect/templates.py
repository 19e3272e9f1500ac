"""What recurs across many unrelated images of the lake, learned from the lake, so that it is no evidence.

A screenshot or app frame, a meme's caption font, a watermark or a logo puts the same local features into
hundreds of images that are not copies of each other (burstiness, Jégou et al. 2009). A RootSIFT descriptor
is *bursty* when near-identical descriptors (L2 ``<= distance``) sit in at least ``min_images`` other images;
real copy groups are mostly pairs and small groups, so their own keypoints stay below that count. Each
image's template region is where its bursty keypoints lie (squares of :data:`RADIUS` px, kept on a coarse
grid of :data:`GRID` px); :func:`content_features` drops the keypoints inside it (from votes and from
matching) and carries the region to the pixel check, which counts no cell of it (:mod:`.verify`)::

    bursty = bursty_descriptors([f.local for f in features], min_images=8)
    content = [content_features(f.local, mask) for f, mask in zip(features, bursty)]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dinolab.curate.copydetect.candidates import QUERY_BATCH, descriptor_index
from dinolab.curate.copydetect.local import LocalFeatures

GRID = 8
"""Pixels (of the analysis image) per cell of the stored template region."""
RADIUS = 12
"""Half side (px) of the square each bursty keypoint marks as template."""
DISTANCE = 0.25
"""RootSIFT L2 distance under which two descriptors count as the same visual element (a rendering of the
same frame or caption: unrelated descriptors are ~0.8-1.1 apart, copies of natural texture ~0.2-0.5)."""


def bursty_descriptors(features: Sequence[LocalFeatures], min_images: int, distance: float = DISTANCE,
                       nprobe: int = 16) -> list[np.ndarray]:
    """Per image, the mask of its descriptors that have a near twin in ``>= min_images`` other images."""
    counts = [len(f.descriptors) for f in features]
    masks = [np.zeros(n, dtype=bool) for n in counts]
    if min_images <= 0 or sum(counts) == 0:
        return masks
    vectors = np.ascontiguousarray(np.concatenate([f.descriptors for f in features if len(f.descriptors)]), np.float32)
    owner = np.repeat(np.arange(len(features)), counts)
    index = descriptor_index(vectors, nprobe=nprobe)
    flags = bursty_flags(index, owner, vectors, owner, min_images, distance)
    return np.split(flags, np.cumsum(counts)[:-1]) if len(counts) > 1 else [flags]


def bursty_flags(index, owner: np.ndarray, queries: np.ndarray, query_owner: np.ndarray, min_images: int,
                 distance: float = DISTANCE) -> np.ndarray:
    """Mask of the ``queries`` (descriptors of images ``query_owner``) with a near twin in ``>= min_images``
    images of ``index`` other than their own (``owner``: the image of each indexed descriptor)."""
    k = min(index.ntotal, 2 * min_images + 2)  # room for repeats inside one image
    flags = np.zeros(len(queries), dtype=bool)
    for start in range(0, len(queries), QUERY_BATCH):
        found, ids = index.search(np.ascontiguousarray(queries[start : start + QUERY_BATCH], np.float32), k)
        near = (ids >= 0) & (found <= distance * distance)
        others = np.where(near, owner[np.maximum(ids, 0)], -1)
        others[others == query_owner[start : start + len(ids), None]] = -1
        others.sort(axis=1)
        distinct = (others >= 0) & np.concatenate([np.ones((len(others), 1), bool), others[:, 1:] != others[:, :-1]], 1)
        flags[start : start + len(ids)] = distinct.sum(axis=1) >= min_images
    return flags


def template_region(features: LocalFeatures, bursty: np.ndarray) -> np.ndarray | None:
    """The coarse mask (``GRID`` px cells of ``features.gray``) around the bursty keypoints, or ``None``."""
    if not bursty.any():
        return None
    height, width = features.gray.shape
    region = np.zeros((-(-height // GRID), -(-width // GRID)), dtype=bool)
    for x, y in features.xy[bursty]:
        region[max(0, int((y - RADIUS) // GRID)) : int((y + RADIUS) // GRID) + 1,
               max(0, int((x - RADIUS) // GRID)) : int((x + RADIUS) // GRID) + 1] = True
    return region


def template_share(features: LocalFeatures) -> float:
    """The share of the image that is template region (0 without one)."""
    return 0.0 if features.template is None else float(features.template.mean())


def in_region(xy: np.ndarray, region: np.ndarray | None) -> np.ndarray:
    """Mask of the keypoints ``xy`` that fall in ``region``."""
    if region is None or not len(xy):
        return np.zeros(len(xy), dtype=bool)
    rows = np.clip((xy[:, 1] // GRID).astype(int), 0, region.shape[0] - 1)
    cols = np.clip((xy[:, 0] // GRID).astype(int), 0, region.shape[1] - 1)
    return region[rows, cols]


def content_features(features: LocalFeatures, bursty: np.ndarray) -> LocalFeatures:
    """``features`` (and its mirror) without the keypoints in the template region, the region attached."""
    region = template_region(features, bursty)
    if region is None:
        return features

    def keep(found: LocalFeatures, mask: np.ndarray | None) -> LocalFeatures:
        inside = in_region(found.xy, mask)
        return LocalFeatures(found.xy[~inside], found.descriptors[~inside], found.gray, template=mask)

    content = keep(features, region)
    if features.mirror is not None:
        content.mirror = keep(features.mirror, np.ascontiguousarray(region[:, ::-1]))
    return content
