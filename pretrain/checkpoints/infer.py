"""Architecture of a backbone from its weights (released hub layout) or from its name.

Widths, depth, register count, FFN kind, patch size and position-table size are read off tensor shapes.
The head count is not stored in the weights: the released models all use 64-dimensional heads
(ViT-S 6, B 12, L 16, g 24), so ``num_heads = embed_dim // 64`` unless the caller knows better.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from torch import Tensor

from dinolab.pretrain.checkpoints.safe_io import CheckpointError
from dinolab.pretrain.models import ViTConfig, config_for
from dinolab.pretrain.models.layers import swiglu_hidden_dim

RELEASED_HEAD_DIM = 64
RELEASED_LAYERSCALE_INIT = 1.0
_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")


def _require(state: Mapping[str, Tensor], key: str, source: str) -> Tensor:
    if key not in state:
        raise CheckpointError(f"{source}: cannot infer the architecture: missing weight {key!r}")
    return state[key]


def _swiglu_ratio(dim: int, hidden: int, source: str) -> float:
    """The ``mlp_ratio`` whose fused-SwiGLU width (2/3 of ratio·dim, rounded up to 8) equals ``hidden``."""
    for ratio in (4.0, hidden * 1.5 / dim):
        if swiglu_hidden_dim(dim, ratio) == hidden:
            return ratio
    raise CheckpointError(f"{source}: SwiGLU hidden width {hidden} matches no mlp_ratio for width {dim}")


def infer_config(
    state: Mapping[str, Tensor], num_heads: int | None = None, source: str = "checkpoint"
) -> ViTConfig:
    """A :class:`ViTConfig` that fits a backbone state dict in dinolab (= released hub) names.

    ``num_heads`` overrides the released rule ``embed_dim // 64`` (needed for non-released widths).
    Position-embedding interpolation is the released rule of the variant; preprocessing is the
    release's evaluation protocol (resize 256, centre-crop 224, ImageNet mean/std).
    """
    cls_token = _require(state, "cls_token", source)
    embed_dim = cls_token.shape[-1]
    patch_weight = _require(state, "patch_embed.proj.weight", source)
    if patch_weight.ndim != 4 or patch_weight.shape[-1] != patch_weight.shape[-2]:
        raise CheckpointError(f"{source}: patch_embed.proj.weight has shape {tuple(patch_weight.shape)}, "
                              "expected [D, C, p, p]")
    patch_size, in_chans = patch_weight.shape[-1], patch_weight.shape[1]
    num_positions = _require(state, "pos_embed", source).shape[1] - 1
    grid = math.isqrt(num_positions)
    if grid * grid != num_positions:
        raise CheckpointError(f"{source}: pos_embed holds {num_positions} patch positions, not a square grid")
    indices = {int(m.group(1)) for key in state if (m := _BLOCK_INDEX.match(key))}
    if not indices:
        raise CheckpointError(f"{source}: no transformer blocks ('blocks.N.*' weights) found")
    depth = max(indices) + 1
    if "blocks.0.mlp.w12.weight" in state:
        ffn = "swiglu"
        mlp_ratio = _swiglu_ratio(embed_dim, _require(state, "blocks.0.mlp.w3.weight", source).shape[1], source)
    else:
        ffn = "mlp"
        mlp_ratio = _require(state, "blocks.0.mlp.fc1.weight", source).shape[0] / embed_dim
    if num_heads is None:
        if embed_dim % RELEASED_HEAD_DIM:
            raise CheckpointError(
                f"{source}: width {embed_dim} is not a multiple of the released head size "
                f"{RELEASED_HEAD_DIM}; give the number of attention heads explicitly"
            )
        num_heads = embed_dim // RELEASED_HEAD_DIM
    registers = state.get("register_tokens")
    return ViTConfig(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        patch_size=patch_size,
        img_size=grid * patch_size,
        in_chans=in_chans,
        num_register_tokens=0 if registers is None else registers.shape[1],
        ffn=ffn,
        mlp_ratio=mlp_ratio,
        layerscale_init=RELEASED_LAYERSCALE_INIT if "blocks.0.ls1.gamma" in state else None,
    )


def config_from_name(name: str) -> ViTConfig:
    """The architecture of a released (``dinov2_vitl14_reg``) or preset (``vit_small``) name."""
    try:
        return config_for(name)
    except ValueError as error:
        raise CheckpointError(str(error)) from error
