"""What datasets hand to a DataLoader, and how batches are formed without crashing on bad files.

A dataset item is a :class:`Sample`, or a :class:`SkippedImage` marker when its file could not be
decoded. :func:`collate_samples` stacks the good samples and carries the markers along in
``Batch.skipped``, so the consumer (in the main process, whatever the number of workers) counts them::

    loader = DataLoader(dataset, batch_size=64, collate_fn=collate_samples)
    for batch in loader:
        skipped.extend(batch.skipped)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Sample:
    """One decoded (and usually transformed) image with its label (``-1`` when unlabelled) and name."""

    image: Any
    label: int
    name: str


@dataclass(frozen=True)
class SkippedImage:
    """Marker returned in place of a :class:`Sample` whose file could not be used."""

    name: str
    reason: str


@dataclass
class Batch:
    """Stacked images ``[B, C, H, W]``, labels ``[B]`` (``-1`` = none), names, and the items skipped."""

    images: Tensor
    labels: Tensor
    names: list[str]
    skipped: list[SkippedImage] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)


def collate_samples(items: Sequence[Sample | SkippedImage]) -> Batch:
    """Stack the :class:`Sample` items (tensors of one size) and keep the :class:`SkippedImage` markers.

    A batch in which every item was skipped has ``images`` of shape ``[0]``.
    """
    samples = [item for item in items if isinstance(item, Sample)]
    skipped = [item for item in items if isinstance(item, SkippedImage)]
    if samples:
        images = torch.stack([torch.as_tensor(sample.image) for sample in samples]).as_subclass(Tensor)
    else:
        images = torch.empty(0)
    labels = torch.tensor([sample.label for sample in samples], dtype=torch.long)
    return Batch(images, labels, [sample.name for sample in samples], skipped)


class TensorBatches:
    """Batches cut from in-memory uint8 images ``[N, H, W]`` or ``[N, C, H, W]``, transformed per batch.

    The fast path for Fashion-MNIST: grayscale is repeated to 3 channels and ``transform`` (e.g. the
    :func:`~pretrain.data.transforms.eval_transform`, which accepts batched tensors) runs once per batch.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None,
        names: Sequence[str],
        batch_size: int,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if images.ndim == 3:
            images = images.unsqueeze(1)
        if images.ndim != 4 or len(names) != len(images):
            raise ValueError(f"expected {len(names)} images [N, (C,) H, W], got shape {tuple(images.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.images = images
        self.labels = torch.full((len(images),), -1, dtype=torch.long) if labels is None else labels
        self.names = list(names)
        self.batch_size = batch_size
        self.transform = transform

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[Batch]:
        for start in range(0, len(self.images), self.batch_size):
            stop = start + self.batch_size
            chunk = self.images[start:stop]
            if chunk.shape[1] == 1:
                chunk = chunk.expand(-1, 3, -1, -1)
            if self.transform is not None:
                chunk = self.transform(chunk)
            yield Batch(chunk.as_subclass(Tensor), self.labels[start:stop], self.names[start:stop])
