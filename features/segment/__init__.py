"""Zero-shot segmentation of target images from one reference image and its mask."""

from dinolab.features.segment.reference import (
    SegmentResult,
    intersection_over_union,
    patch_coverage,
    prototypes,
    segment_target,
)

__all__ = ["SegmentResult", "intersection_over_union", "patch_coverage", "prototypes", "segment_target"]
