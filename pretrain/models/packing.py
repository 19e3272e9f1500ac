"""Sequence packing: all crop sizes through the transformer in one pass (DINOv2, Sec. 5).

The student sees 2 global crops (224 px → 257 tokens) and 8 local crops (98 px → 50 tokens). Instead of
one forward per crop size, the token sequences of every sample are concatenated into a single sequence
``[1, total_tokens, D]`` and attention is restricted to each sample's own tokens by a block-diagonal
mask, so each block runs one set of (large) matrix multiplications. Outputs equal separate forwards.

Two attention back ends:

- ``"dense"``: a boolean ``[T, T]`` mask for :func:`~torch.nn.functional.scaled_dot_product_attention`.
  Exact, runs anywhere, but attention costs ``T²`` instead of ``Σ N_i²``.
- ``"flex"``: a FlexAttention ``BlockMask`` (document mask) that skips the off-diagonal tiles. The
  kernel is fused only when the blocks run under ``torch.compile`` (on CUDA); eager mode falls back to
  a reference implementation that materialises the scores.

``"auto"`` picks ``"flex"`` for CUDA inputs and ``"dense"`` otherwise.

Stochastic depth in training mode follows the released code's packed path: per crop batch, the
residual branch runs on a random subset of ``max(int(B·(1 − rate)), 1)`` samples scaled by
``B / kept`` (rate > 0.1), or on every sample with a Bernoulli keep mask (rate ≤ 0.1).

Example::

    outs = forward_features_packed(model, [globals_224, locals_98], masks=[ibot_masks, None])
    outs[0].cls_token.shape  # [B_global, D]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from dinolab.pretrain.models.layers import SUBSET_DROP_PATH_MIN_RATE, Block
from dinolab.pretrain.models.vit import BackboneOutput, VisionTransformer

AttentionBackend = Literal["auto", "dense", "flex"]


def segment_ids(lengths: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """Index of the sequence each packed token belongs to: lengths ``[2, 3]`` → ``[0, 0, 1, 1, 1]``."""
    counts = torch.as_tensor(list(lengths), device=device)
    return torch.repeat_interleave(torch.arange(len(counts), device=device), counts)


def block_diagonal_mask(lengths: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """Boolean ``[T, T]`` SDPA mask, True where query and key belong to the same packed sequence."""
    segments = segment_ids(lengths, device)
    return segments[:, None] == segments[None, :]


def flex_block_mask(lengths: Sequence[int], device: torch.device | str | None = None) -> Any:
    """FlexAttention ``BlockMask`` of the same block-diagonal (document) pattern."""
    from torch.nn.attention.flex_attention import create_block_mask

    segments = segment_ids(lengths, device)
    total = int(segments.numel())

    def same_sequence(batch: Tensor, head: Tensor, query: Tensor, key: Tensor) -> Tensor:
        return segments[query] == segments[key]

    return create_block_mask(same_sequence, None, None, total, total, device=segments.device)


def _attention_mask(lengths: list[int], device: torch.device, backend: AttentionBackend) -> Any:
    if backend == "auto":
        backend = "flex" if device.type == "cuda" else "dense"
    if backend == "dense":
        return block_diagonal_mask(lengths, device)
    if backend == "flex":
        return flex_block_mask(lengths, device)
    raise ValueError(f"unknown attention backend {backend!r}; use 'auto', 'dense' or 'flex'")


def kept_count(batch: int, drop_rate: float) -> int:
    """Samples whose residual branch is computed under subset stochastic depth (at least one)."""
    return max(int(batch * (1.0 - drop_rate)), 1)


class _PackedBlockRunner:
    """Runs blocks on a list of crop batches ``[B_i, N_i, D]`` packed into one sequence per branch."""

    def __init__(
        self,
        shapes: list[tuple[int, int]],
        drop_rate: float,
        training: bool,
        device: torch.device,
        backend: AttentionBackend,
    ) -> None:
        self.drop_rate = drop_rate if training else 0.0
        self.subset = self.drop_rate > SUBSET_DROP_PATH_MIN_RATE
        # The kept count per crop batch is fixed, so one mask serves every block and branch.
        rows = [kept_count(b, self.drop_rate) if self.subset else b for b, _ in shapes]
        lengths = [n for (_, n), r in zip(shapes, rows) for _ in range(r)]
        self.attn_mask = _attention_mask(lengths, device, backend)

    def residual(self, xs: list[Tensor], branch: Callable[[Tensor], Tensor]) -> list[Tensor]:
        """``x + branch(x)`` for every crop batch, with stochastic depth when training."""
        kept = [self._kept(x) for x in xs] if self.subset else [None] * len(xs)
        inputs = [x if k is None else x[k] for x, k in zip(xs, kept)]
        packed = torch.cat([t.reshape(1, -1, t.shape[-1]) for t in inputs], dim=1)
        pieces = branch(packed).split([t.shape[0] * t.shape[1] for t in inputs], dim=1)
        outputs = []
        for x, k, t, piece in zip(xs, kept, inputs, pieces):
            update = piece.reshape(t.shape)
            if k is not None:
                outputs.append(torch.index_add(x, 0, k, (update * (x.shape[0] / k.numel())).to(x.dtype)))
            elif self.drop_rate > 0.0:
                keep_prob = 1.0 - self.drop_rate
                mask = x.new_empty(x.shape[0], 1, 1).bernoulli_(keep_prob)
                outputs.append(x + update * mask / keep_prob)
            else:
                outputs.append(x + update)
        return outputs

    def _kept(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        return torch.randperm(batch, device=x.device)[: kept_count(batch, self.drop_rate)]

    def block(self, block: Block, xs: list[Tensor]) -> list[Tensor]:
        xs = self.residual(xs, lambda t: block._attn_branch(t, self.attn_mask))
        return self.residual(xs, block._ffn_branch)


def forward_features_packed(
    model: VisionTransformer,
    images: Sequence[Tensor],
    masks: Sequence[Tensor | None] | None = None,
    attention: AttentionBackend = "auto",
) -> list[BackboneOutput]:
    """Like ``model.forward_features(list_of_crop_batches, masks)``, with all crops packed per block.

    ``images``: crop batches ``[B_i, C, H_i, W_i]`` (sizes may differ); ``masks``: per crop batch a
    ``[B_i, h_i·w_i]`` bool mask-token mask or None. Returns one :class:`BackboneOutput` per crop batch.
    """
    images = list(images)
    mask_list = list(masks) if masks is not None else [None] * len(images)
    if not images or len(mask_list) != len(images):
        raise ValueError(f"{len(images)} crop batches but {len(mask_list)} masks")
    xs = [model.prepare_tokens(image, m) for image, m in zip(images, mask_list)]
    shapes = [(x.shape[0], x.shape[1]) for x in xs]
    runners: dict[float, _PackedBlockRunner] = {}  # one mask per distinct drop rate
    for block in model.blocks:
        if block.drop_path not in runners:
            runners[block.drop_path] = _PackedBlockRunner(
                shapes, block.drop_path, model.training, xs[0].device, attention
            )
        xs = runners[block.drop_path].block(block, xs)
    return [model._output(x, m, model.grid_size(image)) for x, m, image in zip(xs, mask_list, images)]
