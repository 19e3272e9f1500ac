"""Training images: Fashion-MNIST in memory, or a folder / file list decoded on the fly.

Both sources hand out uint8 batches ``[B, C, S, S]`` in an order fixed by ``(seed, epoch)``, so a
resumed run sees exactly the batches it would have seen (``data_position`` = epoch and batch index).
Unreadable files in a folder are skipped and counted, never fatal.

Example::

    data = open_training_data("fashion-mnist", storage_size=28, batch_size=128, seed=0)
    for images, skipped in data.batches(epoch=0, start_batch=0):
        ...
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.transforms import InterpolationMode, v2

from pretrain import distributed
from pretrain.data.errors import DatasetError
from pretrain.data.fashion_mnist import load_fashion_mnist
from pretrain.data.image_folder import ImageFolder
from pretrain.data.samples import collate_samples

FASHION_MNIST = "fashion-mnist"


def epoch_order(num_images: int, seed: int, epoch: int) -> Tensor:
    """This process's image order for one epoch: a permutation fixed by ``(seed, epoch)``, every
    ``world_size``-th index from position ``rank`` (the whole permutation when single-process)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_images, generator=generator)[distributed.rank() :: distributed.world_size()]


@dataclass
class SkipCounter:
    """Files that could not be decoded (each counted once, however many epochs meet it)."""

    reasons: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, reason: str) -> None:
        self.reasons.setdefault(name, reason)

    @property
    def count(self) -> int:
        return len(self.reasons)

    @property
    def examples(self) -> list[str]:
        return [f"{name}: {reason}" for name, reason in list(self.reasons.items())[:5]]


class TensorImages:
    """Images held in memory as one uint8 tensor ``[N, C, S, S]`` (Fashion-MNIST: 47 MB)."""

    def __init__(self, images: Tensor, batch_size: int, seed: int, description: str) -> None:
        if images.ndim == 3:
            images = images.unsqueeze(1)
        self.images = images
        self.batch_size = batch_size
        self.seed = seed
        self.description = description
        self.skipped = SkipCounter()

    @property
    def num_images(self) -> int:
        return self.images.shape[0]

    @property
    def batches_per_epoch(self) -> int:
        return self.num_images // distributed.world_size() // self.batch_size

    def batches(self, epoch: int, start_batch: int = 0) -> Iterator[Tensor]:
        order = epoch_order(self.num_images, self.seed, epoch)
        for index in range(start_batch, self.batches_per_epoch):
            yield self.images[order[index * self.batch_size : (index + 1) * self.batch_size]]


class FolderImages:
    """A folder or file list, decoded per batch (optionally in workers) to ``storage_size`` squares."""

    def __init__(self, source: str | Path, storage_size: int, batch_size: int, seed: int,
                 num_workers: int = 0) -> None:
        transform = v2.Compose([
            v2.Resize(storage_size, interpolation=InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(storage_size),
            v2.PILToTensor(),
        ])
        self.dataset = ImageFolder(source, transform=transform)
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.description = f"{len(self.dataset)} images from {source}"
        self.skipped = SkipCounter()

    @property
    def num_images(self) -> int:
        return len(self.dataset)

    @property
    def batches_per_epoch(self) -> int:
        return self.num_images // distributed.world_size() // self.batch_size

    def batches(self, epoch: int, start_batch: int = 0) -> Iterator[Tensor]:
        order = epoch_order(self.num_images, self.seed, epoch).tolist()
        index_batches = [
            order[index * self.batch_size : (index + 1) * self.batch_size]
            for index in range(start_batch, self.batches_per_epoch)
        ]
        loader = DataLoader(self.dataset, batch_sampler=index_batches, collate_fn=collate_samples,
                            num_workers=self.num_workers)
        for batch in loader:
            for skipped in batch.skipped:
                self.skipped.add(skipped.name, skipped.reason)
            yield batch.images  # may hold fewer images when some were skipped (empty: shape [0])


TrainingImages = TensorImages | FolderImages


def open_training_data(source: str, storage_size: int, batch_size: int, seed: int,
                       num_workers: int = 0, limit: int | None = None) -> TrainingImages:
    """``fashion-mnist`` (train split, optionally its first ``limit`` images), a folder or a file list."""
    if source == FASHION_MNIST:
        images, _ = load_fashion_mnist("train", limit=limit)
        if storage_size != images.shape[-1]:
            images = v2.functional.resize(images.unsqueeze(1), [storage_size, storage_size],
                                          antialias=True).squeeze(1)
        data: TrainingImages = TensorImages(images, batch_size, seed, f"Fashion-MNIST train ({len(images)})")
    else:
        if not Path(source).exists():
            raise DatasetError(f"{source}: no such folder or file list (or use --data fashion-mnist)")
        data = FolderImages(source, storage_size, batch_size, seed, num_workers)
    if data.batches_per_epoch < 1:
        raise DatasetError(
            f"{data.description}: fewer images ({data.num_images}) than one batch ({batch_size}); "
            "lower optim.batch_size"
        )
    return data


@dataclass
class LabelledSplit:
    """Labelled images for k-NN evaluation: uint8 ``[N, C, S, S]`` and int64 labels ``[N]``."""

    images: Tensor
    labels: Tensor


def fashion_mnist_eval_splits(train_limit: int | None = None,
                              test_limit: int | None = None) -> tuple[LabelledSplit, LabelledSplit]:
    """Fashion-MNIST train (k-NN memory bank) and test (queries) splits."""
    train_images, train_labels = load_fashion_mnist("train", limit=train_limit)
    test_images, test_labels = load_fashion_mnist("test", limit=test_limit)
    return (LabelledSplit(train_images.unsqueeze(1), train_labels),
            LabelledSplit(test_images.unsqueeze(1), test_labels))
