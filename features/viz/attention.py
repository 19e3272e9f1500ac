"""CLS→patch self-attention of one block, per head (DINO, Caron et al. 2021, Fig. 1 and §4.2.1).

The attention row of the class token is split by token kind: weights on the patches form a map on the
patch grid; weights on register tokens (Darcet et al. 2024) are kept apart, as registers are not places
in the image. The per-head maps are renormalised to sum to one over the patches, so heads compare.

Example::

    maps = cls_attention(model, batch)          # ClsAttention, patch_maps [heads, h, w]
    render_attention(image, maps, "att.png")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dinolab.pretrain.models import VisionTransformer
from dinolab.features.viz.overlay import blend, colorize, normalize01, save_grid, upsample_map


@dataclass
class ClsAttention:
    """CLS attention of one image: on patches ``[heads, h, w]`` and on registers ``[heads, R]``."""

    patch_maps: Tensor
    register_weights: Tensor

    @property
    def mean_map(self) -> Tensor:
        return self.patch_maps.mean(dim=0)

    @property
    def register_share(self) -> Tensor:
        """Fraction of each head's CLS attention that lands on register tokens ``[heads]``."""
        return self.register_weights.sum(dim=-1)


@torch.no_grad()
def cls_attention(model: VisionTransformer, image: Tensor, block_index: int = -1) -> ClsAttention:
    """CLS attention of block ``block_index`` for one normalised image ``[1, 3, H, W]``."""
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one image [1, 3, H, W], got {tuple(image.shape)}")
    grid_h, grid_w = model.grid_size(image)
    weights = model.get_attention_maps(image, block_index=block_index)[0, :, 0]  # [heads, N]
    first_patch = 1 + model.num_register_tokens
    registers = weights[:, 1:first_patch]
    patches = weights[:, first_patch:]
    patches = patches / patches.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return ClsAttention(patches.reshape(-1, grid_h, grid_w).float().cpu(), registers.float().cpu())


def attention_panels(image: np.ndarray, attention: ClsAttention, alpha: float = 0.6) -> tuple[list, list]:
    """Panels (image, each head, mean) as uint8 RGB overlays at image size, with their titles."""
    size = image.shape[:2]
    maps = list(attention.patch_maps) + [attention.mean_map]
    titles = [f"head {index}" for index in range(len(maps) - 1)] + ["mean of heads"]
    if attention.register_weights.shape[-1]:
        shares = attention.register_share.tolist() + [attention.register_share.mean().item()]
        titles = [f"{title} (reg {share:.0%})" for title, share in zip(titles, shares)]
    panels = [image] + [blend(image, colorize(normalize01(upsample_map(m, size))), alpha) for m in maps]
    return panels, ["input"] + titles


def render_attention(
    image: np.ndarray, attention: ClsAttention, path: str | Path, caption: str | None = None
) -> Path:
    """Save the grid of :func:`attention_panels` as a PNG."""
    panels, titles = attention_panels(image, attention)
    columns = min(len(panels), 5)
    return save_grid(panels, path, titles, columns=columns, suptitle=caption)
