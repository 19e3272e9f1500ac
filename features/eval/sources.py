"""Labelled image sources for the evaluation commands: Fashion-MNIST splits or class-subfolder folders.

:func:`open_source` turns a source spec into re-iterable batches plus a description of the data (used
in the feature-cache key) and the class names. ``"fashion-mnist"`` reads a split through the fast
in-memory path; any other spec is a folder (class = first-level subfolder) or a labelled file list.

Example::

    source = open_source("fashion-mnist", "test", transform, batch_size=256, limit=1000)
    for batch in source.batches: ...
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from dinolab.pretrain.data import (
    FASHION_MNIST_CLASSES,
    DatasetError,
    FashionMNIST,
    ImageFolder,
    TensorBatches,
    collate_samples,
)
from dinolab.pretrain.data.fashion_mnist import split_files

FASHION_MNIST = "fashion-mnist"


@dataclass
class LabelledSource:
    """One dataset: the JSON-able description that identifies it, its class names, and its batches.

    Batches are made on first use, so a feature-cache hit never decodes the data.
    """

    description: dict[str, Any]
    classes: list[str]
    make_batches: Callable[[], Iterable]

    @property
    def batches(self) -> Iterable:
        return self.make_batches()


def _folder_fingerprint(dataset: ImageFolder, count: int) -> str:
    """SHA-256 over (name, label, size, mtime) of the first ``count`` files: edits change the key."""
    digest = hashlib.sha256()
    for index in range(count):
        path = dataset.path(index)
        try:
            stat = path.stat()
            stamp = [dataset.names[index], dataset.labels[index], stat.st_size, stat.st_mtime_ns]
        except OSError:
            stamp = [dataset.names[index], dataset.labels[index], None, None]
        digest.update(json.dumps(stamp).encode())
    return digest.hexdigest()


def open_source(
    spec: str,
    split: str,
    transform: Callable,
    batch_size: int,
    limit: int | None = None,
    num_workers: int = 0,
    require_labels: bool = True,
) -> LabelledSource:
    """Batches of ``spec`` (``fashion-mnist`` → ``split``; else a folder or file list), first ``limit``."""
    if limit is not None and limit < 1:
        raise DatasetError(f"--limit must be positive, got {limit}")
    if spec == FASHION_MNIST:

        def fashion_mnist_batches() -> TensorBatches:
            dataset = FashionMNIST(split, limit=limit)  # type: ignore[arg-type]
            images, labels = dataset.arrays()
            return TensorBatches(images, labels, dataset.names(), batch_size, transform)

        description = {
            "source": FASHION_MNIST,
            "split": split,
            "limit": limit,
            "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in split_files(split)],  # type: ignore[arg-type]
        }
        return LabelledSource(description, list(FASHION_MNIST_CLASSES), fashion_mnist_batches)
    folder = ImageFolder(spec, class_subfolders=Path(spec).is_dir(), transform=transform)
    count = len(folder) if limit is None else min(limit, len(folder))
    if require_labels:
        unlabelled = [name for name, label in zip(folder.names[:count], folder.labels[:count]) if label < 0]
        if unlabelled:
            raise DatasetError(
                f"{spec}: {len(unlabelled)} image(s) have no label (e.g. {unlabelled[0]}); put each image "
                "in a class subfolder (root/<class>/<image>) or list 'path<TAB>label' lines"
            )
    dataset = folder if count == len(folder) else Subset(folder, range(count))
    description = {"source": str(Path(spec).resolve()), "limit": limit, "files": _folder_fingerprint(folder, count)}
    return LabelledSource(
        description,
        list(folder.classes),
        lambda: DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_samples),
    )


def align_labels(labels: Tensor, classes: Sequence[str], reference_classes: Sequence[str]) -> Tensor:
    """Re-index ``labels`` named by ``classes`` into ``reference_classes`` (e.g. val → train classes).

    With no class names on either side (integer labels), labels pass through unchanged.
    """
    if not classes or not reference_classes or list(classes) == list(reference_classes):
        return labels
    position = {name: i for i, name in enumerate(reference_classes)}
    unknown = sorted(set(classes) - set(position))
    if unknown:
        raise DatasetError(
            f"classes {unknown[:5]} of the evaluation data do not exist in the training data "
            f"(training classes: {list(reference_classes)[:10]})"
        )
    mapping = torch.tensor([position[name] for name in classes], dtype=torch.long)
    return mapping[labels.long()]
