"""Building blocks of the DINOv2 Vision Transformer.

Module and parameter names follow the released DINOv2 checkpoints so that a released state dict loads
into :class:`~pretrain.models.vit.VisionTransformer` with ``strict=True`` and no renaming.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """Image ``[B, C, H, W]`` → patch tokens ``[B, H/p · W/p, D]`` by a strided convolution."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class LayerScale(nn.Module):
    """Per-channel learnable scale of a residual branch (CaiT); ``gamma`` as in the released keys."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (rows ordered q | k | v).

    The forward pass uses :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels);
    :meth:`attention_weights` computes the softmax map explicitly, since fused kernels do not return it.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def _split_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, head_dim]
        return q, k, v

    def forward(self, x: Tensor, attn_mask: Any = None) -> Tensor:
        """``attn_mask``: an SDPA mask tensor, or a FlexAttention ``BlockMask`` (packed crops)."""
        batch, tokens, dim = x.shape
        q, k, v = self._split_heads(x)
        if attn_mask is None or isinstance(attn_mask, Tensor):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:  # imported here: the module costs ~0.5 s; fused only under torch.compile
            from torch.nn.attention.flex_attention import flex_attention

            out = flex_attention(q, k, v, block_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))

    def attention_weights(self, x: Tensor) -> Tensor:
        """Softmax attention ``[B, heads, N, N]`` for visualisation (explicit, not fused)."""
        q, k, _ = self._split_heads(x)
        logits = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        return logits.float().softmax(dim=-1)


class Mlp(nn.Module):
    """Two-layer GELU feed-forward network (``fc1``/``fc2``)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def swiglu_hidden_dim(dim: int, mlp_ratio: float = 4.0) -> int:
    """Hidden width of the released fused SwiGLU: two thirds of ``mlp_ratio·dim``, rounded up to 8."""
    return (int(dim * mlp_ratio * 2 / 3) + 7) // 8 * 8


class SwiGLUFFN(nn.Module):
    """Fused SwiGLU feed-forward network (``w12`` = gate and value in one matrix, ``w3`` = output)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden_dim)
        self.w3 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


SUBSET_DROP_PATH_MIN_RATE = 0.1
"""Above this drop rate the residual branch is computed on a batch subset instead of being masked."""


def residual_with_drop_path(
    x: Tensor, branch: Callable[[Tensor], Tensor], drop_rate: float, training: bool
) -> Tensor:
    """``x + branch(x)`` with stochastic depth (sample-wise).

    For ``drop_rate > 0.1`` the branch is evaluated only on a random subset of the batch (the kept
    samples) and scaled by ``B / kept``, so the residual is unbiased in expectation and the compute of
    the dropped samples is saved instead of masked away (DINOv2, Sec. 5 "efficient stochastic depth").
    Smaller rates use the classic per-sample Bernoulli mask scaled by ``1 / (1 - rate)``.
    """
    if not training or drop_rate <= 0.0:
        return x + branch(x)
    if drop_rate <= SUBSET_DROP_PATH_MIN_RATE:
        keep_prob = 1.0 - drop_rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        return x + branch(x) * mask / keep_prob
    batch = x.shape[0]
    keep = max(int(batch * (1.0 - drop_rate)), 1)
    kept = torch.randperm(batch, device=x.device)[:keep]
    update = branch(x[kept]) * (batch / keep)
    return torch.index_add(x, 0, kept, update.to(x.dtype))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn: nn.Module,
        layerscale_init: float | None,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = ffn
        self.ls2 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()
        self.drop_path = drop_path

    def _attn_branch(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        return self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask))

    def _ffn_branch(self, x: Tensor) -> Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        if attn_mask is not None:  # packed sequences: the batch axis is not a sample axis
            x = x + self._attn_branch(x, attn_mask)
            return x + self._ffn_branch(x)
        x = residual_with_drop_path(x, self._attn_branch, self.drop_path, self.training)
        return residual_with_drop_path(x, self._ffn_branch, self.drop_path, self.training)

    def attention_weights(self, x: Tensor) -> Tensor:
        """Attention map of this block for input tokens ``x`` (before ``norm1``)."""
        return self.attn.attention_weights(self.norm1(x))
