"""Verification of a candidate pair: an affine map found by RANSAC on local matches, then checked on pixels.

Geometric verification alone (SIFT + RANSAC, many inliers) is fooled by content that copies share but
originals do not — the same emoji, caption font or screenshot frame pasted on two unrelated photos: the
inliers are real, but they sit on the overlay. So the affine map is then checked photometrically: the
source image is warped onto the other, both are blurred (JPEG, noise and pixelisation), and the overlap
is cut into cells; a cell agrees when the zero-mean correlation of the two is high (so colour, contrast
and grey-level changes do not matter). A copy agrees on most of the overlap (an overlay hides a part of
it); two photos sharing only an overlay or a frame agree on the overlay's cells alone::

    result = verify_pair(describe(a), describe(b))
    result.accepted, result.inliers, result.agreement
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from dinolab.curate.copydetect.local import LocalFeatures
from dinolab.curate.copydetect.templates import GRID, template_share


@dataclass(frozen=True)
class VerifyConfig:
    ratio: float = 0.85
    """Lowe's ratio test on the two nearest descriptors of the other image."""
    min_matches: int = 8
    min_inliers: int = 8
    reprojection: float = 6.0
    """RANSAC inlier threshold in pixels of the analysis image."""
    max_scale: float = 8.0
    """Largest zoom between the two images (and its inverse) an affine map may have."""
    max_anisotropy: float = 3.0
    """Largest ratio of the map's two singular values (aspect changes up to 3:1)."""
    cell: int = 16
    blur: float = 1.5
    flat_std: float = 4.0
    """A cell whose grey-level standard deviation is below this is flat (see ``one_sided_weight``)."""
    one_sided_weight: float = 1.0
    """Weight, as a disagreement, of a cell textured on one side and flat on the other."""
    cell_correlation: float = 0.5
    min_cells: int = 24
    min_agreement: float = 0.6
    """Fraction of the overlap's textured cells that must agree for the pair to be a copy."""
    min_evidence: int = 40
    """Agreeing textured cells a copy must have, whatever the fraction: flat pictures (logos, wallpapers,
    the flat parts of a frame) agree on a few cells by chance, a copy of a picture with content on many."""
    solid_std: float = 1.5
    """A pixel whose 5x5 neighbourhood varies less than this (grey levels) is solid fill (a stripe, a border,
    a caption's letters); where one image is solid and the other not, the pixel is occluded."""
    max_occluded: float = 0.5
    """A cell with at most this share of occluded pixels is correlated on the rest of its pixels (a stripe
    across part of a cell hides that part, not the cell); a more occluded cell counts as it is."""
    max_template: float = 0.25
    """A cell more than this share of which lies in a template region (:mod:`.templates`) is not counted."""
    max_blob: float = 0.3
    """Largest contiguous disagreeing block (share of the overlap) a copy may have: an overlay hides a part
    of the photo, but two photos in one frame disagree on one big block, the photos themselves."""
    geometric_inliers: int = 0
    """RANSAC inliers at which the match itself is evidence of a copy (0: never): the pixel check then asks
    only ``geometric_agreement`` of the overlap, since stripes, emoji and captions hide more than half of a
    copy's cells, and still no large disagreeing block and enough agreeing cells."""
    geometric_agreement: float = 0.3


@dataclass(frozen=True)
class Verification:
    accepted: bool
    inliers: int = 0
    agreement: float = 0.0
    cells: int = 0
    mirrored: bool = False
    blob: float = 0.0

    @property
    def score(self) -> float:
        """A similarity in [0, 1] for the ``duplicates`` table: the agreeing fraction of the overlap."""
        return self.agreement


REJECTED = Verification(False)


def match(a: LocalFeatures, b: LocalFeatures, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Ratio-test matches ``a -> b``: matched keypoint coordinates ``([n, 2] in a, [n, 2] in b)``."""
    if len(a) < 2 or len(b) < 2:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < ratio * n.distance]
    src = np.array([a.xy[m.queryIdx] for m in good], dtype=np.float32).reshape(-1, 2)
    dst = np.array([b.xy[m.trainIdx] for m in good], dtype=np.float32).reshape(-1, 2)
    return src, dst


def plausible(affine: np.ndarray, config: VerifyConfig) -> bool:
    singular = np.linalg.svd(affine[:, :2], compute_uv=False)
    if singular[1] <= 1e-6:
        return False
    return (1 / config.max_scale <= singular[1] and singular[0] <= config.max_scale
            and singular[0] / singular[1] <= config.max_anisotropy)


@dataclass(frozen=True)
class Agreement:
    fraction: float
    """Agreeing share of the overlap's cells (one-sided cells weighted, see :class:`VerifyConfig`)."""
    cells: int
    blob: float
    """The largest 4-connected block of disagreeing cells, as a share of the counted cells."""
    agreeing: int = 0
    """Agreeing cells (the evidence, see ``VerifyConfig.min_evidence``)."""


def full_size(region: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """A coarse template region (:mod:`.templates`) at the pixel size ``shape`` (all false when ``None``)."""
    if region is None:
        return np.zeros(shape, np.float32)
    return np.repeat(np.repeat(region, GRID, 0), GRID, 1)[: shape[0], : shape[1]].astype(np.float32)


def solid(gray: np.ndarray, config: VerifyConfig) -> np.ndarray:
    """Mask (float 0/1) of the pixels of ``gray`` in solid fill (see ``VerifyConfig.solid_std``)."""
    gray = gray.astype(np.float32)
    mean = cv2.boxFilter(gray, -1, (5, 5))
    variance = cv2.boxFilter(gray * gray, -1, (5, 5)) - mean * mean
    return (variance < config.solid_std ** 2).astype(np.float32)


def cell_correlation(a: np.ndarray, b: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row (a cell's pixels), the weighted zero-mean correlation of ``a`` and ``b`` and their standard
    deviations, over the pixels of weight 1 (``weight`` all ones: the plain correlation)."""
    count = weight.sum(axis=1, keepdims=True) + 1e-6
    a = (a - (a * weight).sum(axis=1, keepdims=True) / count) * weight
    b = (b - (b * weight).sum(axis=1, keepdims=True) / count) * weight
    std_a, std_b = np.sqrt((a * a).sum(axis=1) / count[:, 0]), np.sqrt((b * b).sum(axis=1) / count[:, 0])
    return (a * b).sum(axis=1) / count[:, 0] / (std_a * std_b + 1e-6), std_a, std_b


def cell_agreement(source: np.ndarray, target: np.ndarray, affine: np.ndarray, config: VerifyConfig,
                   source_template: np.ndarray | None = None, target_template: np.ndarray | None = None) -> Agreement:
    """``source`` warped by ``affine`` onto ``target``: (fraction of textured overlap cells that agree, cells).

    Cells in either image's template region (what recurs across the lake) are not counted either way."""
    height, width = target.shape
    warped = cv2.warpAffine(source.astype(np.float32), affine, (width, height), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.ones_like(source, np.float32), affine, (width, height), flags=cv2.INTER_NEAREST)
    template = full_size(target_template, target.shape)
    if source_template is not None:
        template = np.maximum(template, cv2.warpAffine(full_size(source_template, source.shape), affine, (width, height),
                                                       flags=cv2.INTER_NEAREST))
    occluded = np.abs(cv2.warpAffine(solid(source, config), affine, (width, height), flags=cv2.INTER_NEAREST)
                      - solid(target, config))
    sigma = config.blur
    warped = cv2.GaussianBlur(warped, (0, 0), sigma)
    target = cv2.GaussianBlur(target.astype(np.float32), (0, 0), sigma)
    c = config.cell
    rows, cols = height // c, width // c
    if rows == 0 or cols == 0:
        return Agreement(0.0, 0, 0.0)

    def cells(array: np.ndarray) -> np.ndarray:
        return array[: rows * c, : cols * c].reshape(rows, c, cols, c).transpose(0, 2, 1, 3).reshape(rows * cols, c * c)

    a, b, m = cells(warped), cells(target), cells(mask)
    covered = (m.min(axis=1) > 0) & (cells(template).mean(axis=1) <= config.max_template)
    # Texture is judged on the whole cell; a partly occluded cell is correlated on its visible pixels.
    correlation, std_a, std_b = cell_correlation(a, b, np.ones_like(a))
    occlusion = cells(occluded)
    partly = (occlusion.mean(axis=1) <= config.max_occluded) & (occlusion.max(axis=1) > 0)
    if partly.any():
        correlation[partly] = cell_correlation(a[partly], b[partly], 1 - occlusion[partly])[0]
    textured_a, textured_b = (std_a >= config.flat_std) & covered, (std_b >= config.flat_std) & covered
    both, one = textured_a & textured_b, textured_a ^ textured_b
    # Textured on both sides: agree or not. Textured on one side only (an occluding stripe or border, or a photo
    # against a frame's flat background): half a disagreement. Flat on both: no evidence.
    counted = float(both.sum() + config.one_sided_weight * one.sum())
    if counted == 0:
        return Agreement(0.0, 0, 0.0)
    agree = (correlation >= config.cell_correlation) & both
    disagree = ((both & (correlation < config.cell_correlation)) | one).reshape(rows, cols)
    labels, found = ndimage.label(disagree)
    blob = np.bincount(labels.ravel())[1:].max() if found else 0
    cells_counted = int(both.sum() + one.sum())
    return Agreement(float(agree.sum() / counted), cells_counted, float(blob / max(1, cells_counted)), int(agree.sum()))


def _verify_oriented(a: LocalFeatures, b: LocalFeatures, config: VerifyConfig, mirrored: bool) -> Verification:
    src, dst = match(a, b, config.ratio)
    if len(src) < config.min_matches:
        return REJECTED
    affine, inliers = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=config.reprojection,
                                           maxIters=2000, confidence=0.995)
    if affine is None or inliers is None:
        return REJECTED
    count = int(inliers.sum())
    if count < config.min_inliers or not plausible(affine, config):
        return Verification(False, count, mirrored=mirrored)
    return pixel_check(a, b, affine, config, count, mirrored)


def required_evidence(a: LocalFeatures, b: LocalFeatures, config: VerifyConfig) -> float:
    """``min_evidence`` on the part of the pictures that can give evidence: template cells are not counted,
    so an image that is 40 % lake template (a repeated texture, a frame) needs 40 % fewer agreeing cells."""
    return config.min_evidence * (1.0 - max(template_share(a), template_share(b)))


def pixel_check(a: LocalFeatures, b: LocalFeatures, affine: np.ndarray, config: VerifyConfig, inliers: int = 0,
                mirrored: bool = False) -> Verification:
    """The photometric half: :func:`cell_agreement` both ways under ``affine`` (``a`` → ``b``), judged on the
    side with more evidence; accepted on enough cells, enough agreement and no large disagreeing block."""
    forward = cell_agreement(a.gray, b.gray, affine, config, a.template, b.template)
    backward = cell_agreement(b.gray, a.gray, cv2.invertAffineTransform(affine), config, b.template, a.template)
    best = max(forward, backward, key=lambda result: result.cells)  # the side with more evidence
    blob = max(forward.blob, backward.blob)
    agreement = config.min_agreement
    if config.geometric_inliers and inliers >= config.geometric_inliers:
        agreement = min(agreement, config.geometric_agreement)
    accepted = (best.cells >= config.min_cells and best.fraction >= agreement and blob <= config.max_blob
                and best.agreeing >= required_evidence(a, b, config))
    return Verification(accepted, inliers, best.fraction, best.cells, mirrored, blob)


def verify_aligned(a: LocalFeatures, b: LocalFeatures, config: VerifyConfig = VerifyConfig()) -> Verification:
    """Whether ``b`` is a copy of ``a`` framed the same way (a perceptual-hash match: re-encoded, resized,
    blurred, recoloured), checked on pixels alone: ``a`` stretched onto ``b``'s frame, then the same cell
    test as :func:`verify_pair`. For flat images, where too few keypoints match for a RANSAC map."""
    (height_a, width_a), (height_b, width_b) = a.gray.shape, b.gray.shape
    stretch = np.array([[width_b / width_a, 0.0, 0.0], [0.0, height_b / height_a, 0.0]])
    return pixel_check(a, b, stretch, config) if plausible(stretch, config) else REJECTED


def verify_pair(a: LocalFeatures, b: LocalFeatures, config: VerifyConfig = VerifyConfig()) -> Verification:
    """Whether ``b`` is a copy of ``a`` (either way round), trying ``b`` as is and mirrored."""
    best = _verify_oriented(a, b, config, mirrored=False)
    if not best.accepted and b.mirror is not None:
        flipped = _verify_oriented(a, b.mirror, config, mirrored=True)
        if flipped.accepted or flipped.agreement > best.agreement:
            best = flipped
    return best
