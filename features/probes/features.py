"""Frozen dense features for the probes: which blocks, with or without the class token (DINOv2 §7.4).

- depth ``lin.1``: last block's patch tokens, each concatenated with the class token;
- depth ``lin.4``: the same from four evenly spaced blocks (blocks 3, 6, 9, 12 of a 12-block ViT);
- segmentation ``linear``: last block's patch tokens; ``+ms``: the last four blocks concatenated.

Example::

    spec = depth_feature_spec(len(model.blocks), "lin.4")
    maps = dense_features(model, batch, spec)     # [B, 4 · 2D, h, w]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dinolab.pretrain.models import VisionTransformer


@dataclass(frozen=True)
class FeatureSpec:
    """Block indices (0-based) to concatenate, and whether the class token joins each patch token."""

    layers: tuple[int, ...]
    with_cls: bool

    def channels(self, embed_dim: int) -> int:
        return len(self.layers) * embed_dim * (2 if self.with_cls else 1)


def depth_feature_spec(depth: int, kind: str) -> FeatureSpec:
    """``lin.1`` or ``lin.4`` for a backbone of ``depth`` blocks (shallow ones repeat blocks)."""
    if kind == "lin.1":
        return FeatureSpec((depth - 1,), with_cls=True)
    if kind == "lin.4":
        return FeatureSpec(tuple(max(0, round(depth * k / 4) - 1) for k in range(1, 5)), with_cls=True)
    raise ValueError(f"unknown depth probe features {kind!r}; use 'lin.1' or 'lin.4'")


def segmentation_feature_spec(depth: int, kind: str) -> FeatureSpec:
    """``linear`` (last block) or ``+ms`` (last four blocks) patch tokens, no class token."""
    if kind == "linear":
        return FeatureSpec((depth - 1,), with_cls=False)
    if kind == "+ms":
        return FeatureSpec(tuple(max(0, depth - 4 + k) for k in range(4)), with_cls=False)
    raise ValueError(f"unknown segmentation probe features {kind!r}; use 'linear' or '+ms'")


@torch.no_grad()
def dense_features(model: VisionTransformer, images: Tensor, spec: FeatureSpec) -> Tensor:
    """Normed tokens of ``spec.layers`` as maps ``[B, C, h, w]`` (class token broadcast over patches)."""
    outputs = model.get_intermediate_layers(images, n=list(spec.layers), reshape=True, return_class_token=True)
    maps = []
    for patches, cls_token in outputs:
        maps.append(patches)
        if spec.with_cls:
            maps.append(cls_token[:, :, None, None].expand_as(patches))
    return torch.cat(maps, dim=1).float()
