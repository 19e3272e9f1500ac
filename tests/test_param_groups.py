"""Parameter groups of a tiny ViT + DINO head: multipliers, weight-decay exemptions, fusion."""

import pytest
import torch

from dinolab.pretrain.models import build_vit
from dinolab.pretrain.train.heads import DINOHead
from dinolab.pretrain.train.param_groups import apply_schedules, build_param_groups


@pytest.fixture()
def parts():
    backbone = build_vit("vit_pico", num_register_tokens=2)  # depth 2
    head = DINOHead(backbone.embed_dim, 32, hidden_dim=16, bottleneck_dim=8)
    return {"backbone": backbone, "dino_head": head, "ibot_head": head}  # shared head


def _by_name(groups):
    return {name: g for g in groups for name in g["names"]}


def test_multipliers_of_named_parameters(parts):
    groups = build_param_groups(parts, layer_decay=0.9, patch_embed_lr_mult=0.2)
    by_name = _by_name(groups)
    lr = {name: g["lr_multiplier"] for name, g in by_name.items()}
    # depth 2 → ids: tokens/patch 0, blocks.0 → 1, blocks.1 → 2, norm/heads → 3; mult 0.9**(3 − id)
    assert lr["backbone.cls_token"] == pytest.approx(0.9**3)
    assert lr["backbone.register_tokens"] == pytest.approx(0.9**3)
    assert lr["backbone.pos_embed"] == pytest.approx(0.9**3)
    assert lr["backbone.patch_embed.proj.weight"] == pytest.approx(0.9**3 * 0.2)
    assert lr["backbone.blocks.0.attn.qkv.weight"] == pytest.approx(0.9**2)
    assert lr["backbone.blocks.1.mlp.fc2.weight"] == pytest.approx(0.9)
    assert lr["backbone.norm.weight"] == pytest.approx(1.0)
    assert lr["dino_head.mlp.0.weight"] == pytest.approx(1.0)
    assert by_name["dino_head.last_layer.weight_v"]["is_last_layer"]
    assert sum(g["is_last_layer"] for g in by_name.values()) == 1


def test_no_weight_decay_on_norms_biases_gammas_tokens(parts):
    by_name = _by_name(build_param_groups(parts))
    no_wd = {n for n, g in by_name.items() if g["wd_multiplier"] == 0.0}
    for name in ["backbone.blocks.0.norm1.weight", "backbone.blocks.1.attn.qkv.bias", "backbone.blocks.0.ls1.gamma",
                 "backbone.blocks.1.ls2.gamma", "backbone.norm.bias", "backbone.cls_token", "backbone.mask_token",
                 "backbone.register_tokens", "backbone.pos_embed", "dino_head.mlp.2.bias"]:
        assert name in no_wd, name
    for name in ["backbone.blocks.0.attn.qkv.weight", "backbone.patch_embed.proj.weight",
                 "dino_head.mlp.4.weight", "dino_head.last_layer.weight_v"]:
        assert by_name[name]["wd_multiplier"] == 1.0, name


def test_fused_groups_cover_every_parameter_once(parts):
    groups = build_param_groups(parts)
    keys = [(g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"]) for g in groups]
    assert len(keys) == len(set(keys))
    # (tokens) (patch w) (patch b) + 2 blocks × (decay, no decay) + (top decay, top no decay) + last layer
    assert len(groups) == 3 + 4 + 2 + 1
    all_params = [p for g in groups for p in g["params"]]
    unique = {id(p) for m in parts.values() for p in m.parameters()}
    assert len(all_params) == len({id(p) for p in all_params}) == len(unique)  # shared head counted once


def test_apply_schedules_sets_lr_and_weight_decay(parts):
    optimizer = torch.optim.AdamW(build_param_groups(parts), lr=1.0)
    apply_schedules(optimizer, lr=0.01, weight_decay=0.04, last_layer_lr=0.0)
    for g in optimizer.param_groups:
        expected_lr = 0.0 if g["is_last_layer"] else 0.01 * g["lr_multiplier"]
        assert g["lr"] == pytest.approx(expected_lr)
        assert g["weight_decay"] == pytest.approx(0.04 * g["wd_multiplier"])


def test_frozen_parameters_are_skipped(parts):
    parts["backbone"].pos_embed.requires_grad_(False)
    names = _by_name(build_param_groups(parts))
    assert "backbone.pos_embed" not in names
