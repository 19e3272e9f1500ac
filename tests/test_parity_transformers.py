"""Output parity with an independent implementation: transformers' Dinov2Model / Dinov2WithRegistersModel.

Every model gets random weights everywhere (biases, norms, LayerScale, tokens, position table) so that a
mis-mapped tensor cannot hide behind an initial value. Outputs must agree within 1e-4 (fp32) after
converting in either direction. Position-embedding interpolation: at the native grid both rules agree;
elsewhere dinolab reproduces transformers only in ``interpolation="hf"`` mode, and its default follows
the released code's rule, tested on the table itself against ``F.interpolate`` with the released args.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers")

from dinolab.pretrain.checkpoints import load_backbone, save_backbone  # noqa: E402
from dinolab.pretrain.checkpoints.hf_layout import config_from_hf, from_hf_state  # noqa: E402
from dinolab.pretrain.models import VisionTransformer, ViTConfig  # noqa: E402
from dinolab.pretrain.models.pos_embed import interpolate_pos_embed  # noqa: E402

ATOL = 1e-4
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14)
SMALL_SIZES = [(56, 56), (84, 84), (42, 42), (56, 98)]  # native 4×4, larger, smaller, rectangular


@torch.no_grad()
def randomize_(module: nn.Module) -> nn.Module:
    """Random values for every parameter: norms around 1, LayerScale in (0.1, 0.6), the rest N(0, 0.05²)."""
    for name, param in module.named_parameters():
        if ("norm" in name) and name.endswith("weight") and param.ndim == 1:
            param.copy_(1.0 + 0.1 * torch.randn_like(param))
        elif name.endswith(("gamma", "lambda1")):
            param.copy_(0.1 + 0.5 * torch.rand_like(param))
        elif name.endswith(("cls_token", "register_tokens", "position_embeddings", "pos_embed", "mask_token")):
            param.copy_(0.5 * torch.randn_like(param))
        else:
            param.copy_(0.05 * torch.randn_like(param))
    return module.eval()


def hf_model(registers: int = 0, swiglu: bool = False, **dims) -> nn.Module:
    """A transformers model with random weights (built on the meta device: its own init is skipped)."""
    with torch.device("meta"):
        if registers:
            config = transformers.Dinov2WithRegistersConfig(
                num_register_tokens=registers, use_swiglu_ffn=swiglu, **dims
            )
            model = transformers.Dinov2WithRegistersModel(config)
        else:
            model = transformers.Dinov2Model(transformers.Dinov2Config(use_swiglu_ffn=swiglu, **dims))
    return randomize_(model.to_empty(device="cpu"))


def assert_same_outputs(hf: nn.Module, ours: VisionTransformer, height: int, width: int) -> None:
    images = torch.randn(1, 3, height, width)
    with torch.no_grad():
        hidden = hf(pixel_values=images).last_hidden_state
        out = ours.forward_features(images)
    first_patch = 1 + ours.num_register_tokens
    torch.testing.assert_close(out.cls_token, hidden[:, 0], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.register_tokens, hidden[:, 1:first_patch], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.patch_tokens, hidden[:, first_patch:], atol=ATOL, rtol=0)


VARIANTS = [
    pytest.param(0, False, id="mlp"),
    pytest.param(0, True, id="swiglu"),
    pytest.param(4, False, id="registers"),
    pytest.param(2, True, id="registers-swiglu"),
]


@pytest.mark.parametrize("registers,swiglu", VARIANTS)
def test_hf_directory_to_dinolab_small(tmp_path, registers, swiglu):
    hf = hf_model(registers, swiglu, **SMALL)
    hf.save_pretrained(tmp_path / "hf")
    native = load_backbone(tmp_path / "hf")  # default: the released rule
    assert native.config.num_register_tokens == registers
    assert native.config.ffn == ("swiglu" if swiglu else "mlp")
    assert_same_outputs(hf, native, 56, 56)
    compatible = load_backbone(tmp_path / "hf", interpolation="hf")
    for height, width in SMALL_SIZES:
        assert_same_outputs(hf, compatible, height, width)


@pytest.mark.parametrize("registers,swiglu", VARIANTS)
def test_dinolab_to_hf_directory_small(tmp_path, registers, swiglu):
    config = ViTConfig(embed_dim=64, depth=2, num_heads=2, img_size=56, num_register_tokens=registers,
                       ffn="swiglu" if swiglu else "mlp", layerscale_init=1.0, interpolation="hf")
    ours = randomize_(VisionTransformer(config))
    save_backbone(ours, tmp_path / "hf", fmt="hf")
    hf = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    expected = "Dinov2WithRegistersModel" if registers else "Dinov2Model"
    assert type(hf).__name__ == expected
    for height, width in SMALL_SIZES:
        assert_same_outputs(hf, ours, height, width)


def test_default_rule_departs_from_hf_dinov2model_off_grid_only(tmp_path):
    """The released non-register rule (0.1 offset) differs from transformers' explicit size."""
    hf = hf_model(0, False, **SMALL)
    hf.save_pretrained(tmp_path / "hf")
    released = load_backbone(tmp_path / "hf", interpolation="released")
    images = torch.randn(1, 3, 84, 84)
    with torch.no_grad():
        gap = (released(images) - hf(pixel_values=images).pooler_output).abs().max().item()
    assert gap > 10 * ATOL


def test_runtime_state_dict_names_convert():
    """transformers' in-memory names (q_proj..., gate_proj/up_proj) map like the on-disk ones."""
    hf = hf_model(2, True, **SMALL)
    config = config_from_hf(hf.config.to_dict())
    ours = VisionTransformer(config)
    ours.load_state_dict(from_hf_state(hf.state_dict(), config), strict=True)
    assert_same_outputs(hf, ours.eval(), 56, 56)


# ---------------------------------------------------------------- released shapes
VIT_S14 = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518, patch_size=14)
VIT_B14 = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=518, patch_size=14)


def converted(hf: nn.Module) -> VisionTransformer:
    """dinolab copy of an in-memory transformers model (its runtime weight names)."""
    config = config_from_hf(hf.config.to_dict())
    with torch.device("meta"):
        ours = VisionTransformer(config)
    ours.load_state_dict(from_hf_state(hf.state_dict(), config), strict=True, assign=True)
    return ours.eval()


def test_vit_s14_from_hf_native_518_and_hf_mode_224():
    hf = hf_model(0, False, **VIT_S14)
    ours = converted(hf)
    assert (ours.embed_dim, len(ours.blocks), ours.blocks[0].attn.num_heads) == (384, 12, 6)
    assert ours.pos_embed.shape == (1, 1370, 384)
    assert_same_outputs(hf, ours, 518, 518)  # default (released) rule at the native grid
    assert_same_outputs(hf, ours.with_interpolation("hf"), 224, 224)


def test_vit_s14_reg_to_hf_directory_at_224(tmp_path):
    config = ViTConfig(embed_dim=384, depth=12, num_heads=6, num_register_tokens=4, layerscale_init=1.0)
    with torch.device("meta"):
        ours = VisionTransformer(config)
    ours = randomize_(ours.to_empty(device="cpu"))
    save_backbone(ours, tmp_path / "hf", fmt="hf")
    hf = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "Dinov2WithRegistersModel"
    assert_same_outputs(hf, ours, 224, 224)  # default rule of the register variant equals transformers'


def test_vit_b14_from_hf_hf_mode_224():
    hf = hf_model(0, False, **VIT_B14)
    ours = converted(hf).with_interpolation("hf")
    assert (ours.embed_dim, len(ours.blocks), ours.blocks[0].attn.num_heads) == (768, 12, 12)
    assert_same_outputs(hf, ours, 224, 224)


# ---------------------------------------------------------------- interpolation rules on the table
@pytest.mark.parametrize("grid_hw", [(16, 16), (20, 12), (45, 45)])
def test_default_rule_without_registers_is_released_offset_rule(grid_hw):
    table = torch.randn(1, 1 + 37 * 37, 8)
    model = VisionTransformer(ViTConfig(embed_dim=8, depth=1, num_heads=1))
    height, width = grid_hw
    grid = table[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=((height + 0.1) / 37, (width + 0.1) / 37),
                             mode="bicubic", antialias=False)
    expected = torch.cat([table[:, :1], expected.permute(0, 2, 3, 1).reshape(1, -1, 8)], dim=1)
    torch.testing.assert_close(interpolate_pos_embed(table, grid_hw, model.interpolation), expected)


@pytest.mark.parametrize("grid_hw", [(16, 16), (20, 12), (45, 45)])
def test_default_rule_with_registers_is_released_antialias_rule(grid_hw):
    table = torch.randn(1, 1 + 37 * 37, 8)
    model = VisionTransformer(ViTConfig(embed_dim=8, depth=1, num_heads=1, num_register_tokens=4))
    grid = table[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=grid_hw, mode="bicubic", antialias=True)
    expected = torch.cat([table[:, :1], expected.permute(0, 2, 3, 1).reshape(1, -1, 8)], dim=1)
    torch.testing.assert_close(interpolate_pos_embed(table, grid_hw, model.interpolation), expected)


def test_rules_agree_at_native_grid_and_differ_elsewhere():
    table = torch.randn(1, 1 + 37 * 37, 8)
    side = math.isqrt(table.shape[1] - 1)
    for rule in ("offset", "antialias", "size"):
        assert interpolate_pos_embed(table, (side, side), rule) is table
    off_grid = {rule: interpolate_pos_embed(table, (16, 16), rule) for rule in ("offset", "antialias", "size")}
    assert not torch.allclose(off_grid["offset"], off_grid["size"])
    assert not torch.allclose(off_grid["antialias"], off_grid["size"])
