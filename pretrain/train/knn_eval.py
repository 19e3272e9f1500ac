"""k-NN monitoring of a backbone during and after pretraining (DINO Sec. 4.1 protocol, T = 0.07).

Features are the normalised class token, or the class token concatenated with the mean patch token
(``"cls+avgpool"``), computed on the full labelled images (no augmentation).

Under ``torchrun`` every process embeds an equal share of the images (so an FSDP2-sharded teacher runs
the same number of forwards on every rank), the features are all-gathered, and rank 0 computes the
accuracies, which every rank receives.

Example::

    accuracy = knn_evaluate(backbone, train_split, test_split, feature="cls+avgpool")
    accuracy[20]["top1"]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dinolab.pretrain import distributed
from dinolab.pretrain.data.eval_splits import LabelledSplit
from dinolab.pretrain.models.vit import VisionTransformer
from dinolab.pretrain.train.knn import knn_accuracy


def normalise_images(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 ``[B, 1 or 3, H, W]`` → float normalised ``[B, 3, H, W]``."""
    pixels = images.float() / 255.0
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    mean_t = pixels.new_tensor(mean).view(1, -1, 1, 1)
    std_t = pixels.new_tensor(std).view(1, -1, 1, 1)
    return (pixels - mean_t) / std_t


@torch.no_grad()
def backbone_features(backbone: VisionTransformer, images: Tensor, feature: str = "cls",
                      batch_size: int = 512) -> Tensor:
    """Frozen features ``[N, D]`` (``cls``) or ``[N, 2D]`` (``cls+avgpool``) of uint8 images."""
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    pre = backbone.preprocessing
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        batch = normalise_images(images[start : start + batch_size].to(device), pre.mean, pre.std)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = backbone.forward_features(batch)
        cls_token = F.normalize(out.cls_token.float(), dim=1)
        if feature == "cls+avgpool":
            pooled = F.normalize(out.patch_tokens.float().mean(1), dim=1)
            cls_token = torch.cat([cls_token, pooled], dim=1)
        chunks.append(cls_token.cpu())
    backbone.train(was_training)
    return torch.cat(chunks)


def shared_backbone_features(backbone: VisionTransformer, images: Tensor, feature: str = "cls") -> Tensor:
    """:func:`backbone_features` of all ``images`` on every process, each computing ``ceil(N / world)``.

    Rank ``r`` embeds images ``[r·s, (r + 1)·s)`` (the last shares padded with copies of the last
    image so every rank runs the same forwards), then the shares are all-gathered in rank order.
    """
    world = distributed.world_size()
    if world == 1:
        return backbone_features(backbone, images, feature)
    count = images.shape[0]
    share = math.ceil(count / world)
    rows = torch.arange(distributed.rank() * share, (distributed.rank() + 1) * share).clamp(max=count - 1)
    local = backbone_features(backbone, images[rows], feature)
    device = next(backbone.parameters()).device  # NCCL gathers device tensors
    return distributed.all_gather_rows(local.to(device)).cpu()[:count]


def knn_evaluate(backbone: VisionTransformer, train: LabelledSplit, test: LabelledSplit,
                 feature: str = "cls", ks: tuple[int, ...] = (10, 20)) -> dict[int, dict[str, float]]:
    """Weighted k-NN accuracy (percent) of ``backbone`` features, train split as the memory bank.

    Collective under ``torchrun``: every rank must call it (see module docstring).
    """
    train_x = shared_backbone_features(backbone, train.images, feature)
    test_x = shared_backbone_features(backbone, test.images, feature)
    accuracy = None
    if distributed.is_main_process():
        accuracy = knn_accuracy(train_x, train.labels, test_x, test.labels, ks=ks)
    return distributed.broadcast_from_main(accuracy)


def raw_pixel_knn(train: LabelledSplit, test: LabelledSplit,
                  ks: tuple[int, ...] = (10, 20)) -> dict[int, dict[str, float]]:
    """The same k-NN (cosine, weighted votes) on raw flattened pixels: the baseline to beat."""
    def pixels(split: LabelledSplit) -> Tensor:
        return split.images.reshape(split.images.shape[0], -1).float()

    return knn_accuracy(pixels(train), train.labels, pixels(test), test.labels, ks=ks)
