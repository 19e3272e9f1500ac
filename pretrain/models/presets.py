"""Named architectures: the DINOv2 release (``dinov2_vits14_reg`` ...) and small presets for CPU work."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from dinolab.pretrain.models.vit import ViTConfig, VisionTransformer

ARCHITECTURES: dict[str, ViTConfig] = {
    # Released DINOv2 widths (patch 14, 518 px position table).
    "vit_small": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "vit_base": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    "vit_large": ViTConfig(embed_dim=1024, depth=24, num_heads=16),
    "vit_giant2": ViTConfig(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu"),
    # Small presets for CPU training and tests.
    "vit_tiny": ViTConfig(embed_dim=192, depth=12, num_heads=3),
    "vit_pico": ViTConfig(embed_dim=64, depth=2, num_heads=2, img_size=56),
}

_RELEASED = re.compile(r"^dinov2_vit(?P<size>[sblg])14(?P<reg>_reg)?$")
_SIZE_TO_ARCH = {"s": "vit_small", "b": "vit_base", "l": "vit_large", "g": "vit_giant2"}
RELEASED_NAMES: tuple[str, ...] = tuple(
    f"dinov2_vit{size}14{suffix}" for size in "sblg" for suffix in ("", "_reg")
)


def config_for(name: str, **overrides: Any) -> ViTConfig:
    """Architecture of a preset (``vit_small``...) or a released model name (``dinov2_vitb14_reg``)."""
    match = _RELEASED.match(name)
    if match:
        base = ARCHITECTURES[_SIZE_TO_ARCH[match["size"]]]
        base = replace(base, num_register_tokens=4 if match["reg"] else 0, layerscale_init=1.0)
    elif name in ARCHITECTURES:
        base = ARCHITECTURES[name]
    else:
        known = ", ".join(sorted(ARCHITECTURES) + list(RELEASED_NAMES))
        raise ValueError(f"unknown architecture {name!r}; known: {known}")
    return replace(base, **overrides)


def build_vit(name: str, **overrides: Any) -> VisionTransformer:
    """A randomly initialised backbone for a preset or released name, with field overrides."""
    return VisionTransformer(config_for(name, **overrides))
