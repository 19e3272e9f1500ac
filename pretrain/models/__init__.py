"""Backbones of the DINOv2 family."""

from dinolab.pretrain.models.presets import ARCHITECTURES, RELEASED_NAMES, build_vit, config_for
from dinolab.pretrain.models.vit import BackboneOutput, Preprocessing, ViTConfig, VisionTransformer

__all__ = [
    "ARCHITECTURES",
    "RELEASED_NAMES",
    "BackboneOutput",
    "Preprocessing",
    "ViTConfig",
    "VisionTransformer",
    "build_vit",
    "config_for",
]
