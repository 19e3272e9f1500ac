"""The DINOv2 Vision Transformer: patch 14, register tokens, LayerScale, MLP or fused SwiGLU, mask token.

Token order inside the model is ``[cls, registers, patches]``; registers are inserted after the
position embedding is added, so they carry none. Parameter names equal the released checkpoints'.

Example::

    model = build_vit("vit_small", num_register_tokens=4)
    out = model.forward_features(torch.randn(2, 3, 224, 224))
    out.cls_token.shape, out.patch_tokens.shape  # (2, 384), (2, 256, 384)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from dinolab.pretrain.models.layers import Block, Mlp, PatchEmbed, SwiGLUFFN, swiglu_hidden_dim
from dinolab.pretrain.models.pos_embed import InterpolationRule, interpolate_pos_embed, resolve_rule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a backbone (evaluation protocol of the DINOv2 release)."""

    input_size: int = 224
    resize_size: int = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of a :class:`VisionTransformer`; everything needed to rebuild it."""

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    patch_size: int = 14
    img_size: int = 518
    in_chans: int = 3
    num_register_tokens: int = 0
    ffn: Literal["mlp", "swiglu"] = "mlp"
    mlp_ratio: float = 4.0
    layerscale_init: float | None = 1e-5
    drop_path_rate: float = 0.0
    interpolation: str = "released"  # "released", "hf" or a rule of pretrain.models.pos_embed
    preprocessing: Preprocessing = field(default_factory=Preprocessing)

    @property
    def pos_grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def ffn_hidden_dim(self) -> int:
        if self.ffn == "swiglu":
            return swiglu_hidden_dim(self.embed_dim, self.mlp_ratio)
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def interpolation_rule(self) -> InterpolationRule:
        return resolve_rule(self.interpolation, self.num_register_tokens)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (stored next to weights so a checkpoint rebuilds its model)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ViTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ViTConfig fields {sorted(unknown)}")
        values = dict(data)
        if isinstance(values.get("preprocessing"), dict):
            pre = dict(values["preprocessing"])
            pre["mean"], pre["std"] = tuple(pre["mean"]), tuple(pre["std"])
            values["preprocessing"] = Preprocessing(**pre)
        return cls(**values)


@dataclass
class BackboneOutput:
    """Named outputs of :meth:`VisionTransformer.forward_features` (normed unless said otherwise)."""

    cls_token: Tensor  # [B, D]
    register_tokens: Tensor  # [B, R, D]
    patch_tokens: Tensor  # [B, h·w, D]
    prenorm: Tensor  # [B, 1 + R + h·w, D], before the final norm
    masks: Tensor | None  # [B, h·w] bool, True where the mask token replaced a patch
    grid_hw: tuple[int, int]  # patch grid of this input


class VisionTransformer(nn.Module):
    """ViT backbone of the DINOv2 family (see module docstring)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.embed_dim = dim
        self.patch_size = config.patch_size
        self.num_register_tokens = config.num_register_tokens
        self.interpolation: InterpolationRule = config.interpolation_rule

        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.pos_grid**2, dim))
        if config.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, dim))
        else:
            self.register_tokens = None
        self.mask_token = nn.Parameter(torch.zeros(1, dim))

        drop_rates = [config.drop_path_rate] * config.depth  # uniform, as in DINOv2
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, self._make_ffn(), config.layerscale_init, drop_path=rate)
            for rate in drop_rates
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.reset_parameters()

    def _make_ffn(self) -> nn.Module:
        ffn_cls = SwiGLUFFN if self.config.ffn == "swiglu" else Mlp
        return ffn_cls(self.embed_dim, self.config.ffn_hidden_dim)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DINOv2 initialisation: truncated normal (std 0.02) weights, tiny class/register tokens."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.config.preprocessing

    # ---------------------------------------------------------------- tokens
    def grid_size(self, image: Tensor) -> tuple[int, int]:
        """Patch grid ``(h, w)`` of an image batch; sizes must be multiples of the patch size."""
        height, width = image.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}; "
                "resize or centre-crop it first (pretrain.data.transforms.eval_transform does)"
            )
        return height // self.patch_size, width // self.patch_size

    def prepare_tokens(self, image: Tensor, masks: Tensor | None = None) -> Tensor:
        """Image ``[B, C, H, W]`` → tokens ``[B, 1 + R + h·w, D]`` ready for the first block."""
        if image.ndim != 4 or image.shape[1] != self.config.in_chans:
            raise ValueError(
                f"expected images [B, {self.config.in_chans}, H, W], got {tuple(image.shape)}"
            )
        grid_hw = self.grid_size(image)
        x = self.patch_embed(image)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + interpolate_pos_embed(self.pos_embed, grid_hw, self.interpolation).to(x.dtype)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(x.shape[0], -1, -1).to(x.dtype)
            x = torch.cat([x[:, :1], registers, x[:, 1:]], dim=1)
        return x

    def _split(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        first_patch = 1 + self.num_register_tokens
        return tokens[:, 0], tokens[:, 1:first_patch], tokens[:, first_patch:]

    # --------------------------------------------------------------- forward
    def forward_features(
        self, images: Tensor | Sequence[Tensor], masks: Tensor | Sequence[Tensor | None] | None = None
    ) -> BackboneOutput | list[BackboneOutput]:
        """Run the backbone. A list of crop batches (e.g. global + local sizes) gives a list of outputs."""
        if isinstance(images, (list, tuple)):
            mask_list = masks if isinstance(masks, (list, tuple)) else [masks] * len(images)
            if len(mask_list) != len(images):
                raise ValueError(f"{len(images)} crop batches but {len(mask_list)} masks")
            return [self.forward_features(img, m) for img, m in zip(images, mask_list)]
        x = self.prepare_tokens(images, masks)
        for block in self.blocks:
            x = block(x)
        return self._output(x, masks, self.grid_size(images))

    def _output(self, prenorm: Tensor, masks: Tensor | None, grid_hw: tuple[int, int]) -> BackboneOutput:
        cls_token, registers, patches = self._split(self.norm(prenorm))
        return BackboneOutput(cls_token, registers, patches, prenorm, masks, grid_hw)

    def forward(self, images: Tensor) -> Tensor:
        """The normed class token ``[B, D]`` (the released models' ``forward`` in eval mode)."""
        return self.forward_features(images).cls_token

    def get_intermediate_layers(
        self,
        images: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple[Tensor, ...] | tuple[tuple[Tensor, Tensor], ...]:
        """Patch tokens of the last ``n`` blocks (or of the block indices in ``n``), registers dropped.

        ``reshape`` gives ``[B, D, h, w]`` maps; ``return_class_token`` pairs each with its class token.
        """
        depth = len(self.blocks)
        wanted = range(depth - n, depth) if isinstance(n, int) else [i % depth for i in n]
        if not wanted or any(i < 0 or i >= depth for i in wanted):
            raise ValueError(f"layer selection {n!r} is outside 0..{depth - 1}")
        grid_h, grid_w = self.grid_size(images)
        x = self.prepare_tokens(images)
        collected: dict[int, Tensor] = {}
        for index, block in enumerate(self.blocks[: max(wanted) + 1]):
            x = block(x)
            if index in wanted:
                collected[index] = self.norm(x) if norm else x
        outputs = []
        for index in wanted:
            cls_token, _, patches = self._split(collected[index])
            if reshape:
                patches = patches.reshape(x.shape[0], grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous()
            outputs.append((patches, cls_token) if return_class_token else patches)
        return tuple(outputs)

    @torch.no_grad()
    def get_attention_maps(self, images: Tensor, block_index: int = -1) -> Tensor:
        """Softmax attention ``[B, heads, N, N]`` of one block, computed explicitly (SDPA hides it).

        Token order of the map is ``[cls, registers, patches]``.
        """
        index = block_index % len(self.blocks)
        x = self.prepare_tokens(images)
        for block in self.blocks[:index]:
            x = block(x)
        return self.blocks[index].attention_weights(x)

    def with_interpolation(self, rule: str) -> "VisionTransformer":
        """Switch position-embedding interpolation in place (``"released"``, ``"hf"``...); returns self."""
        self.config = replace(self.config, interpolation=rule)
        self.interpolation = self.config.interpolation_rule
        return self
