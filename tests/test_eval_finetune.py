"""Fine-tuning: layer-wise lr decay groups, schedule, and a few steps that lower the training loss."""

import pytest
import torch

from dinolab.features.eval.finetune import (
    FinetuneConfig,
    LinearClassifier,
    evaluate_classifier,
    finetune,
    finetune_param_groups,
    warmup_cosine,
)
from dinolab.pretrain.models import build_vit


def _tiny_backbone():
    return build_vit("vit_pico", patch_size=8, img_size=32, depth=2)


def test_layer_decay_groups():
    classifier = LinearClassifier(_tiny_backbone(), num_classes=3)
    groups = finetune_param_groups(classifier, layer_decay=0.5)
    scale_of = {id(p): (g["lr_multiplier"], 0.05 * g["wd_multiplier"]) for g in groups for p in g["params"]}
    backbone = classifier.backbone
    assert scale_of[id(classifier.head.weight)] == (1.0, 0.05)
    assert scale_of[id(classifier.head.bias)] == (1.0, 0.0)
    assert scale_of[id(backbone.norm.weight)] == (1.0, 0.0)
    assert scale_of[id(backbone.blocks[1].attn.qkv.weight)] == (0.5, 0.05)
    assert scale_of[id(backbone.blocks[0].mlp.fc1.weight)] == (0.25, 0.05)
    assert scale_of[id(backbone.blocks[0].ls1.gamma)] == (0.25, 0.0)
    assert scale_of[id(backbone.patch_embed.proj.weight)] == (0.125, 0.05)
    assert scale_of[id(backbone.pos_embed)] == (0.125, 0.0)
    assert len(scale_of) == sum(1 for _ in classifier.parameters())


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 2, 1.0, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(2, 10, 2, 1.0, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(6, 10, 2, 1.0, 0.1) == pytest.approx(0.55)


def test_few_steps_lower_training_loss():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(8)
    images = torch.randn(24, 3, 32, 32, generator=generator) * 0.3
    images[torch.arange(24), labels, :8, :8] += 2.0  # class = which channel has a bright corner
    loader = [(images[i : i + 8], labels[i : i + 8]) for i in range(0, 24, 8)]
    classifier = LinearClassifier(_tiny_backbone(), num_classes=3, patch_mean=True)
    before = torch.nn.functional.cross_entropy(classifier.eval()(images), labels).item()
    config = FinetuneConfig(epochs=8, lr=1e-2, warmup_epochs=1, drop_path=0.1, label_smoothing=0.0)
    losses = finetune(classifier, loader, config, progress=False)
    after = torch.nn.functional.cross_entropy(classifier(images), labels).item()
    assert len(losses) == 8 * 3
    assert after < 0.5 * before
    assert all(block.drop_path == 0.0 for block in classifier.backbone.blocks)  # reset after training
    assert evaluate_classifier(classifier, loader, progress=False)["top1"] > 90.0
