"""Full fine-tuning of a backbone with a linear head (the BEiT / DINOv2-style classification recipe).

Recipe: AdamW; learning rate with linear warm-up then cosine decay; layer-wise learning-rate decay
(block ``i`` of ``depth`` gets ``decay^(depth - i)``, embeddings ``decay^(depth + 1)``, final norm and
head 1); no weight decay on biases, norms, LayerScale gammas and tokens; uniform drop path; light
augmentation (random resized crop, horizontal flip) done by the caller's transform. On CUDA the forward
runs under bf16 autocast; on CPU in fp32.

Example::

    classifier = LinearClassifier(backbone, num_classes=10)
    history = finetune(classifier, train_loader, FinetuneConfig(epochs=5, lr=1e-4))
    evaluate_classifier(classifier, test_loader)  # {"top1": ..., "top5": ...}
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from dinolab.pretrain.models import VisionTransformer
from dinolab.pretrain.train.param_groups import apply_schedules, build_param_groups


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of :func:`finetune` (learning rate is the head's; deeper layers get it)."""

    epochs: int = 10
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    clip_grad: float = 3.0


class LinearClassifier(nn.Module):
    """Backbone + linear head on the final CLS token (optionally concatenated with the patch mean)."""

    def __init__(self, backbone: VisionTransformer, num_classes: int, patch_mean: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.patch_mean = patch_mean
        self.head = nn.Linear(backbone.embed_dim * (2 if patch_mean else 1), num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: Tensor) -> Tensor:
        out = self.backbone.forward_features(images)
        features = out.cls_token
        if self.patch_mean:
            features = torch.cat([features, out.patch_tokens.mean(dim=1)], dim=1)
        return self.head(features)


def finetune_param_groups(classifier: LinearClassifier, layer_decay: float) -> list[dict]:
    """Fused AdamW groups: layer-wise lr decay over the backbone, head at the top rate, no weight decay
    on biases, norms, gammas and tokens (``pretrain.train.param_groups``; no extra patch-embed factor)."""
    return build_param_groups(
        {"backbone": classifier.backbone, "head": classifier.head},
        layer_decay=layer_decay,
        patch_embed_lr_mult=1.0,
    )


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float) -> float:
    """Linear warm-up from 0 to ``peak`` then cosine decay to ``floor``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def set_drop_path(backbone: VisionTransformer, rate: float) -> None:
    """Uniform stochastic-depth rate on every block (active in training mode only)."""
    for block in backbone.blocks:
        block.drop_path = rate


def _batches(loader: Iterable) -> Iterable[tuple[Tensor, Tensor]]:
    """``(images, labels)`` of each non-empty batch (``pretrain.data.Batch`` or a tuple)."""
    for batch in loader:
        images, labels = (batch.images, batch.labels) if hasattr(batch, "images") else (batch[0], batch[1])
        if labels.numel():
            yield images, labels


def finetune(
    classifier: LinearClassifier,
    loader: Iterable,
    config: FinetuneConfig,
    device: torch.device | str | None = None,
    steps_per_epoch: int | None = None,
    progress: bool = True,
) -> list[float]:
    """Train every parameter for ``config.epochs`` passes over ``loader``; returns the loss per step.

    ``loader`` yields ``(images, labels, ...)``; its length gives the schedule unless ``steps_per_epoch``
    is passed.
    """
    device = torch.device(device) if device is not None else next(classifier.parameters()).device
    classifier.to(device).train()
    set_drop_path(classifier.backbone, config.drop_path)
    optimizer = torch.optim.AdamW(finetune_param_groups(classifier, config.layer_decay), betas=(0.9, 0.999))
    steps_per_epoch = steps_per_epoch or len(loader)  # type: ignore[arg-type]
    total_steps = max(1, config.epochs * steps_per_epoch)
    warmup_steps = min(total_steps - 1, round(config.warmup_epochs * steps_per_epoch))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    losses: list[float] = []
    bar = tqdm(total=total_steps, desc="fine-tune", unit="step", disable=not progress)
    for epoch in range(config.epochs):
        for images, labels in _batches(loader):
            step = len(losses)
            lr = warmup_cosine(step, total_steps, warmup_steps, config.lr, config.min_lr)
            apply_schedules(optimizer, lr=lr, weight_decay=config.weight_decay, last_layer_lr=lr)
            with autocast:
                logits = classifier(images.to(device, non_blocking=True))
            loss = F.cross_entropy(
                logits.float(), labels.to(device).long(), label_smoothing=config.label_smoothing
            )
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad:
                nn.utils.clip_grad_norm_(classifier.parameters(), config.clip_grad)
            optimizer.step()
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
    bar.close()
    set_drop_path(classifier.backbone, 0.0)
    classifier.eval()
    return losses


@torch.no_grad()
def evaluate_classifier(
    classifier: nn.Module, loader: Iterable, device: torch.device | str | None = None, progress: bool = True
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) of ``classifier`` on ``loader``."""
    device = torch.device(device) if device is not None else next(classifier.parameters()).device
    classifier.to(device).eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    correct1 = correct5 = total = 0
    for images, labels in tqdm(_batches(loader), desc="evaluate", unit="batch", disable=not progress):
        with autocast:
            logits = classifier(images.to(device)).float()
        labels = labels.to(device).long()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
        total += labels.shape[0]
    if total == 0:
        raise ValueError("no images to evaluate")
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total}
