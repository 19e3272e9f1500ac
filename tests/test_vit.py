"""Backbone shapes, token order, masks, intermediate layers, attention maps, drop path."""

import pytest
import torch

from dinolab.pretrain.models import build_vit
from dinolab.pretrain.models.layers import residual_with_drop_path


def test_forward_features_named_outputs_rectangular():
    model = build_vit("vit_pico", num_register_tokens=3).eval()
    out = model.forward_features(torch.randn(2, 3, 28, 42))
    assert out.cls_token.shape == (2, 64)
    assert out.register_tokens.shape == (2, 3, 64)
    assert out.patch_tokens.shape == (2, 6, 64)
    assert out.prenorm.shape == (2, 1 + 3 + 6, 64)
    assert out.grid_hw == (2, 3)
    torch.testing.assert_close(out.cls_token, model.norm(out.prenorm)[:, 0])


def test_size_not_multiple_of_patch_is_a_clear_error():
    model = build_vit("vit_pico")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model.forward_features(torch.randn(1, 3, 30, 28))


def test_mask_token_replaces_masked_patches_only():
    model = build_vit("vit_pico").eval()
    with torch.no_grad():
        model.mask_token.fill_(3.0)
    images = torch.randn(1, 3, 28, 28)
    masks = torch.zeros(1, 4, dtype=torch.bool)
    masks[0, 1] = True
    tokens = model.prepare_tokens(images, masks)
    plain = model.prepare_tokens(images)
    assert not torch.allclose(tokens[:, 2], plain[:, 2])
    torch.testing.assert_close(tokens[:, [0, 1, 3, 4]], plain[:, [0, 1, 3, 4]])


def test_list_of_crops_gives_list_of_outputs():
    model = build_vit("vit_pico").eval()
    outs = model.forward_features([torch.randn(2, 3, 28, 28), torch.randn(3, 3, 14, 14)])
    assert [o.patch_tokens.shape for o in outs] == [(2, 4, 64), (3, 1, 64)]


def test_intermediate_layers_match_forward():
    model = build_vit("vit_pico", num_register_tokens=2).eval()
    images = torch.randn(2, 3, 28, 28)
    (last, cls_token), = model.get_intermediate_layers(images, 1, return_class_token=True)
    out = model.forward_features(images)
    torch.testing.assert_close(last, out.patch_tokens)
    torch.testing.assert_close(cls_token, out.cls_token)
    maps = model.get_intermediate_layers(images, [0, 1], reshape=True)
    assert [m.shape for m in maps] == [(2, 64, 2, 2)] * 2


def test_attention_maps_equal_fused_attention_output():
    model = build_vit("vit_pico", num_register_tokens=1).eval()
    images = torch.randn(2, 3, 28, 28)
    weights = model.get_attention_maps(images, block_index=0)
    assert weights.shape == (2, 2, 6, 6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 6))
    # weights @ v must equal what SDPA computed inside the block
    block = model.blocks[0]
    tokens = block.norm1(model.prepare_tokens(images))
    _, _, v = block.attn._split_heads(tokens)
    explicit = (weights @ v).transpose(1, 2).reshape(2, 6, 64)
    fused = block.attn(tokens)
    torch.testing.assert_close(block.attn.proj(explicit), fused, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rate", [0.05, 0.4])
def test_drop_path_is_unbiased_in_expectation(rate):
    x = torch.zeros(8, 3)
    branch = lambda t: torch.ones_like(t)  # noqa: E731
    mean = torch.stack([residual_with_drop_path(x, branch, rate, True) for _ in range(4000)]).mean(0)
    torch.testing.assert_close(mean, torch.ones(8, 3), atol=0.05, rtol=0)
