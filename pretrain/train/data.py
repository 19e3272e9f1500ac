"""Training images: Fashion-MNIST in memory, a folder / file list, or webdataset shards decoded on the fly.

Every source hands out uint8 batches ``[B, C, S, S]`` in an order fixed by ``(seed, epoch)``, so a
resumed run sees exactly the batches it would have seen (``data_position`` = epoch and batch index).
Unreadable files or samples are skipped and counted, never fatal. Shards (a ``curate run`` output's
``shards/`` folder, its ``index.json``, or a brace pattern of tars) are read by random access with a
shard-windowed shuffle (:func:`pretrain.data.shards.windowed_order`); see docs/pretraining.md.

Example::

    data = open_training_data("fashion-mnist", storage_size=28, batch_size=128, seed=0)
    for images, skipped in data.batches(epoch=0, start_batch=0):
        ...
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, v2

from dinolab.pretrain import distributed
from dinolab.pretrain.data.errors import DatasetError
from dinolab.pretrain.data.fashion_mnist import load_fashion_mnist
from dinolab.pretrain.data.image_folder import ImageFolder
from dinolab.pretrain.data.images import ImageDecodeError, decode_image
from dinolab.pretrain.data.samples import Sample, SkippedImage, collate_samples
from dinolab.pretrain.data.shards import (
    SHARDS_PER_WINDOW,
    SampleReadError,
    ShardReader,
    is_shard_spec,
    resolve_shards,
    windowed_order,
)

FASHION_MNIST = "fashion-mnist"


def epoch_order(num_images: int, seed: int, epoch: int) -> Tensor:
    """This process's image order for one epoch: a permutation fixed by ``(seed, epoch)``, every
    ``world_size``-th index from position ``rank`` (the whole permutation when single-process)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_images, generator=generator)[distributed.rank() :: distributed.world_size()]


def storage_tensor(image: Image.Image, size: int) -> Tensor:
    """uint8 ``[3, size, size]`` of an RGB image: shorter side resized to ``size`` (bicubic, antialiased),
    centre crop — exactly ``v2.Resize(size)``, ``v2.CenterCrop(size)``, ``v2.PILToTensor()``, at a fifth
    of their per-call cost (an image already ``size``² is only converted)."""
    if image.size != (size, size):
        image = v2.functional.resize(image, [size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        image = v2.functional.center_crop(image, [size])
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def _loader_generator(seed: int) -> torch.Generator:
    """A DataLoader's own generator: without one, every iterator it starts draws its workers' base seed
    from the global RNG, which then moves with the number of epochs started (and differs after a
    resume) — weight init and stochastic depth would see other draws."""
    return torch.Generator().manual_seed(seed)


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


def decoded_batches(dataset: Dataset, order: list[int], batch_numbers: range, batch_size: int, num_workers: int,
                    seed: int, skipped: SkipCounter) -> Iterator[Tensor]:
    """Batches ``batch_numbers`` of ``order`` decoded by ``dataset`` (in DataLoader workers when asked);
    unreadable items are counted in ``skipped``, so a batch may hold fewer images (none: shape ``[0]``)."""
    index_batches = [order[index * batch_size : (index + 1) * batch_size] for index in batch_numbers]
    loader = DataLoader(dataset, batch_sampler=index_batches, collate_fn=collate_samples,
                        num_workers=num_workers, generator=_loader_generator(seed))
    for batch in loader:
        for item in batch.skipped:
            skipped.add(item.name, item.reason)
        yield batch.images


class FolderImages:
    """A folder or file list, decoded per batch (optionally in workers) to ``storage_size`` squares."""

    def __init__(self, source: str | Path, storage_size: int, batch_size: int, seed: int,
                 num_workers: int = 0) -> None:
        self.dataset = ImageFolder(source, transform=partial(storage_tensor, size=storage_size))
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
        yield from decoded_batches(self.dataset, order, range(start_batch, self.batches_per_epoch), self.batch_size,
                                   self.num_workers, self.seed, self.skipped)


class ShardSamples(Dataset):
    """Sample ``i`` of a shard set decoded from its original bytes (:func:`~pretrain.data.images.decode_image`,
    as the ingest stage decodes) to a :func:`storage_tensor`, or a :class:`SkippedImage` marker."""

    def __init__(self, reader: ShardReader, storage_size: int) -> None:
        self.reader = reader
        self.storage_size = storage_size

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> Sample | SkippedImage:
        try:
            name, data = self.reader.read(index)
            image = decode_image(data, name).image
        except SampleReadError as error:
            return SkippedImage(error.name, error.reason)
        except ImageDecodeError as error:
            return SkippedImage(error.path, error.reason)
        return Sample(image=storage_tensor(image, self.storage_size), label=-1, name=name)


DECODE_ONCE_BYTES = 1 << 30
"""Shard sets whose decoded storage tensors (N × 3 × S²) fit in this many bytes are decoded once."""


def one_channel_if_gray(images: Tensor) -> Tensor:
    """A uint8 batch ``[B, 3, S, S]`` whose every image is gray (R = G = B) as ``[B, 1, S, S]``.

    The multi-crop augmentation then does a third of the work, with the same crops up to rounding
    (grayscale, saturation and colour jitter of a gray image are gray); Fashion-MNIST in memory is
    handed out the same way.
    """
    if images.ndim == 4 and images.shape[1] == 3 and images.shape[0] > 0 \
            and torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2]):
        return images[:, :1].contiguous()
    return images


class _Numbered(Dataset):
    """``(index, item)`` of a dataset, so a DataLoader's workers can say which sample each result is."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[int, Sample | SkippedImage]:
        return index, self.dataset[index]


def _collate_numbered(items: list[tuple[int, Sample | SkippedImage]]) -> tuple[Tensor, Tensor, list[SkippedImage]]:
    """Indices and stacked images of the readable items (one tensor per batch between processes)."""
    good = [(index, item) for index, item in items if isinstance(item, Sample)]
    indices = torch.tensor([index for index, _ in good], dtype=torch.long)
    images = torch.stack([item.image for _, item in good]) if good else torch.empty(0, dtype=torch.uint8)
    return indices, images, [item for _, item in items if isinstance(item, SkippedImage)]


class ShardImages:
    """Webdataset shards (``curate run``'s ``shards/``, an ``index.json`` or a brace pattern), read by
    random access and decoded (optionally in DataLoader workers) to ``storage_size`` squares.

    The epoch's order is a shard-windowed shuffle fixed by ``(seed, epoch)`` (every ``shards_per_window``
    shards mixed together; one window when there are fewer shards), dealt to ranks like
    :func:`epoch_order`: each rank takes every ``world``-th sample, so all ranks get
    ``num_images // world // batch`` batches whatever the shard sizes, and the global batch does not
    depend on the number of processes.

    A set whose decoded storage fits in ``cache_bytes`` (Fashion-MNIST: 141 MB) is decoded once, at
    construction, and batches are cut from memory like :class:`TensorImages`; a larger one is decoded
    batch by batch. Both give the same batches; a batch of gray images comes as one channel
    (:func:`one_channel_if_gray`).
    """

    def __init__(self, source: str, storage_size: int, batch_size: int, seed: int, num_workers: int = 0,
                 shards_per_window: int = SHARDS_PER_WINDOW, cache_bytes: int = DECODE_ONCE_BYTES,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        self.shards = resolve_shards(source, storage_options)
        self.dataset = ShardSamples(ShardReader(self.shards, storage_options=storage_options), storage_size)
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.shards_per_window = shards_per_window
        self.skipped = SkipCounter()
        self.cached: Tensor | None = None
        self.readable: Tensor | None = None
        if self.num_images * 3 * storage_size**2 <= cache_bytes:
            self.cached, self.readable = self._decode_all()
        count = len(self.shards.shards)
        how = "decoded once" if self.cached is not None else "decoded per batch"
        self.description = f"{self.num_images} samples in {count} shard{'s' * (count != 1)} from {source} ({how})"

    @property
    def num_images(self) -> int:
        return self.shards.num_samples

    @property
    def batches_per_epoch(self) -> int:
        return self.num_images // distributed.world_size() // self.batch_size

    def order(self, epoch: int) -> Tensor:
        """This process's sample numbers for ``epoch`` (rank-strided slice of the global order)."""
        order = windowed_order(self.shards.counts, self.seed, epoch, self.shards_per_window)
        return order[distributed.rank() :: distributed.world_size()]

    def _decode_all(self) -> tuple[Tensor, Tensor]:
        """Every sample in shard order, decoded (in ``num_workers`` processes): images ``[N, C, S, S]``
        (C = 1 when all are gray) and which samples were readable."""
        size = self.dataset.storage_size
        images = torch.zeros(self.num_images, 3, size, size, dtype=torch.uint8)
        readable = torch.zeros(self.num_images, dtype=torch.bool)
        loader = DataLoader(_Numbered(self.dataset), batch_size=256, collate_fn=_collate_numbered,
                            num_workers=self.num_workers, generator=_loader_generator(self.seed))
        for indices, decoded, skipped in loader:
            if len(indices):
                images[indices] = decoded
                readable[indices] = True
            for item in skipped:
                self.skipped.add(item.name, item.reason)
        return one_channel_if_gray(images), readable

    def batches(self, epoch: int, start_batch: int = 0) -> Iterator[Tensor]:
        order = self.order(epoch)
        if self.cached is not None:
            for index in range(start_batch, self.batches_per_epoch):
                rows = order[index * self.batch_size : (index + 1) * self.batch_size]
                yield one_channel_if_gray(self.cached[rows[self.readable[rows]]])
            return
        for images in decoded_batches(self.dataset, order.tolist(), range(start_batch, self.batches_per_epoch),
                                      self.batch_size, self.num_workers, self.seed, self.skipped):
            yield one_channel_if_gray(images)


TrainingImages = TensorImages | FolderImages | ShardImages


def open_training_data(source: str, storage_size: int, batch_size: int, seed: int,
                       num_workers: int = 0, limit: int | None = None,
                       cache_bytes: int = DECODE_ONCE_BYTES,
                       storage_options: Mapping[str, Any] | None = None) -> TrainingImages:
    """``fashion-mnist`` (train split, optionally its first ``limit`` images), shards (see
    :func:`pretrain.data.shards.is_shard_spec`, local or behind fsspec URLs reached with
    ``storage_options``; decoded once when they fit in ``cache_bytes``), a folder or a file list."""
    if source == FASHION_MNIST:
        images, _ = load_fashion_mnist("train", limit=limit)
        if storage_size != images.shape[-1]:
            images = v2.functional.resize(images.unsqueeze(1), [storage_size, storage_size],
                                          antialias=True).squeeze(1)
        data: TrainingImages = TensorImages(images, batch_size, seed, f"Fashion-MNIST train ({len(images)})")
    elif is_shard_spec(source):
        data = ShardImages(source, storage_size, batch_size, seed, num_workers, cache_bytes=cache_bytes,
                           storage_options=storage_options)
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
