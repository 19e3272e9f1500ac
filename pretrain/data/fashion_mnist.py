"""Fashion-MNIST (Xiao et al., 2017) read from local IDX files, never downloaded.

The default location is Debian's ``dataset-fashion-mnist`` package; ``DINOLAB_FASHION_MNIST_DIR`` or the
``root`` argument point elsewhere. IDX is parsed here with numpy + gzip and validated (magic numbers,
sizes, label range). Two ways in::

    images, labels = load_fashion_mnist("test", limit=1000)   # uint8 [N, 28, 28], int64 [N]: batched pipelines
    dataset = FashionMNIST("train", transform=eval_transform(pre))  # per-item Samples for a DataLoader
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from dinolab.pretrain.data.errors import DatasetError
from dinolab.pretrain.data.samples import Sample

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "DINOLAB_FASHION_MNIST_DIR"
CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
_FILE_PREFIX = {"train": "train", "test": "t10k"}
_IDX_UBYTE = 0x08

Split = Literal["train", "test"]


class DatasetFilesError(DatasetError):
    """Fashion-MNIST files that are missing or corrupt; the message says how to fix it."""


def resolve_root(root: str | Path | None = None) -> Path:
    """Folder holding the four ``*-ubyte.gz`` files: ``root``, else ``$DINOLAB_FASHION_MNIST_DIR``, else Debian's."""
    if root is not None:
        return Path(root)
    from_env = os.environ.get(ENV_VAR)
    return Path(from_env) if from_env else DEFAULT_DIR


def split_files(split: Split, root: str | Path | None = None) -> tuple[Path, Path]:
    """``(images, labels)`` paths of a split; raises :class:`DatasetFilesError` with install advice if absent."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    folder = resolve_root(root)
    prefix = _FILE_PREFIX[split]
    paths = folder / f"{prefix}-images-idx3-ubyte.gz", folder / f"{prefix}-labels-idx1-ubyte.gz"
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise DatasetFilesError(
            f"Fashion-MNIST files not found in {folder}: {', '.join(missing)}. Install them with "
            f"'sudo apt-get install dataset-fashion-mnist' (files land in {DEFAULT_DIR}), or set "
            f"{ENV_VAR} (or pass the folder) to a directory holding train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz. "
            "Nothing is downloaded."
        )
    return paths


def read_idx(path: str | Path, expected_ndim: int) -> np.ndarray:
    """Parse a gzip-compressed IDX file of unsigned bytes into an array of its declared shape.

    Layout: two zero bytes, a type byte (``0x08`` = ubyte), a byte giving the number of dimensions, one
    big-endian uint32 per dimension, then the data in C order.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise DatasetFilesError(f"{path}: not a readable gzip file ({error})") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetFilesError(f"{path}: bad IDX magic number (file is corrupt or not IDX)")
    if raw[2] != _IDX_UBYTE or raw[3] != expected_ndim:
        raise DatasetFilesError(
            f"{path}: IDX header declares type 0x{raw[2]:02x} with {raw[3]} dims; "
            f"expected unsigned bytes (0x08) with {expected_ndim} dims"
        )
    header_size = 4 + 4 * expected_ndim
    if len(raw) < header_size:
        raise DatasetFilesError(f"{path}: IDX header is truncated")
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">u4", count=expected_ndim, offset=4))
    expected_bytes = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header_size != expected_bytes:
        raise DatasetFilesError(
            f"{path}: IDX header declares shape {shape} ({expected_bytes:,} bytes) but the file holds "
            f"{len(raw) - header_size:,} data bytes (truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def load_fashion_mnist(
    split: Split = "train", root: str | Path | None = None, limit: int | None = None
) -> tuple[Tensor, Tensor]:
    """Whole split (or its first ``limit`` items) as uint8 images ``[N, 28, 28]`` and int64 labels ``[N]``."""
    image_path, label_path = split_files(split, root)
    images = read_idx(image_path, expected_ndim=3)
    labels = read_idx(label_path, expected_ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DatasetFilesError(
            f"{image_path.parent}: {images.shape[0]} images but {labels.shape[0]} labels in the {split} split"
        )
    if labels.size and labels.max() >= len(CLASSES):
        raise DatasetFilesError(f"{label_path}: label {int(labels.max())} outside 0..{len(CLASSES) - 1}")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        images, labels = images[:limit], labels[:limit]
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


class FashionMNIST(Dataset):
    """One split of Fashion-MNIST as :class:`Sample` items (names ``"<split>/<index>"``).

    ``indices`` picks a subset, ``limit`` keeps the first ``limit`` of it. Without a ``transform`` the
    image is a PIL RGB image (``"L"`` with ``rgb=False``), or with ``as_tensor=True`` a uint8 tensor
    ``[3, 28, 28]`` (``[1, 28, 28]`` with ``rgb=False``); the
    transform (e.g. :func:`pretrain.data.transforms.eval_transform`) receives that and its result is the
    sample's image. The whole split is decoded once into memory (47 MB for train).
    """

    classes = CLASSES

    def __init__(
        self,
        split: Split = "train",
        root: str | Path | None = None,
        *,
        indices: Sequence[int] | None = None,
        limit: int | None = None,
        as_tensor: bool = False,
        rgb: bool = True,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        images, labels = load_fashion_mnist(split, root)
        selected = torch.arange(len(labels)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        if selected.numel() and (selected.min() < 0 or selected.max() >= len(labels)):
            raise IndexError(f"indices must lie in 0..{len(labels) - 1}")
        if limit is not None:
            if limit < 1:
                raise ValueError(f"limit must be positive, got {limit}")
            selected = selected[:limit]
        self.split = split
        self.indices = selected
        self.images = images[selected]
        self.labels = labels[selected]
        self.as_tensor = as_tensor
        self.rgb = rgb
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        pixels = self.images[index]
        image: Any
        if self.as_tensor:
            image = pixels.expand(3 if self.rgb else 1, -1, -1).clone()
        else:
            image = Image.fromarray(pixels.numpy())
            image = image.convert("RGB") if self.rgb else image
        if self.transform is not None:
            image = self.transform(image)
        name = f"{self.split}/{int(self.indices[index])}"
        return Sample(image=image, label=int(self.labels[index]), name=name)

    def arrays(self) -> tuple[Tensor, Tensor]:
        """This selection as one uint8 tensor ``[N, 28, 28]`` and int64 labels ``[N]`` (no copy)."""
        return self.images, self.labels

    def names(self) -> list[str]:
        return [f"{self.split}/{int(i)}" for i in self.indices]
