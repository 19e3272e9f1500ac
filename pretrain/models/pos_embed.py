"""Position-embedding interpolation rules.

The released DINOv2 models store a position table for a square grid (37×37 at 518 px for patch 14) and
resize it bicubically to the grid of each input. Implementations differ in the details, and the
differences change the outputs, so each rule is named:

- ``"offset"``: the released rule for models *without* registers: ``scale_factor = (g + 0.1) / M`` per
  axis, no antialias.
- ``"antialias"``: the released rule for models *with* registers: explicit ``size = g``, antialias on.
  Hugging Face ``Dinov2WithRegistersModel`` uses it too.
- ``"size"``: explicit ``size = g``, no antialias: the rule of Hugging Face ``Dinov2Model``, which
  departs from the released non-register code (max difference ~0.03 on a 0.09-scale table at 224 px).

All rules return the table unchanged when the grid already matches a square table (native resolution).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

InterpolationRule = Literal["offset", "antialias", "size"]
INTERPOLATION_RULES: tuple[str, ...] = ("offset", "antialias", "size")
RELEASED_OFFSET = 0.1


def default_rule(num_register_tokens: int) -> InterpolationRule:
    """The released code's rule for a model with this many register tokens."""
    return "antialias" if num_register_tokens > 0 else "offset"


def transformers_rule(num_register_tokens: int) -> InterpolationRule:
    """The rule of Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` for this variant."""
    return "antialias" if num_register_tokens > 0 else "size"


def resolve_rule(rule: str, num_register_tokens: int) -> InterpolationRule:
    """Accept a rule name, ``"released"`` (the release's rule) or ``"hf"`` (transformers' rule)."""
    if rule == "released":
        return default_rule(num_register_tokens)
    if rule == "hf":
        return transformers_rule(num_register_tokens)
    if rule not in INTERPOLATION_RULES:
        raise ValueError(
            f"unknown interpolation rule {rule!r}; choose released, hf or one of {INTERPOLATION_RULES}"
        )
    return rule  # type: ignore[return-value]


def interpolate_pos_embed(pos_embed: Tensor, grid_hw: tuple[int, int], rule: InterpolationRule) -> Tensor:
    """Resize a ``[1, 1 + M·M, D]`` table (class slot first) to ``[1, 1 + h·w, D]`` for ``grid_hw``.

    The computation runs in fp32 and the result is cast back to the table's dtype.
    """
    if rule not in INTERPOLATION_RULES:
        raise ValueError(f"unknown interpolation rule {rule!r}; choose one of {INTERPOLATION_RULES}")
    height, width = grid_hw
    num_positions = pos_embed.shape[1] - 1
    side = math.isqrt(num_positions)
    if side * side != num_positions:
        raise ValueError(f"position table holds {num_positions} patches, not a square grid")
    if (height, width) == (side, side):
        return pos_embed
    dim = pos_embed.shape[-1]
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    grid = patch_pos.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if rule == "offset":
        scale = ((height + RELEASED_OFFSET) / side, (width + RELEASED_OFFSET) / side)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
    else:
        antialias = rule == "antialias"
        grid = F.interpolate(grid, size=(height, width), mode="bicubic", antialias=antialias)
    if grid.shape[-2:] != (height, width):
        raise RuntimeError(f"interpolated grid {tuple(grid.shape[-2:])} != requested {(height, width)}")
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, height * width, dim).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=1)
