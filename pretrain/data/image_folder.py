"""A folder of images (searched recursively) or a file list, in a deterministic sorted order.

Sources:

- a directory: every file whose suffix is an image suffix (any case), hidden files and folders left
  out, sorted by relative path. With ``class_subfolders=True`` the first-level subfolder names, sorted,
  become class indices (files directly in the root get label ``-1``).
- a text file: one path per line, optionally followed by a tab and a label (an integer, or a class
  name: names are sorted into indices). Relative paths are taken from the list's folder; blank lines
  and lines starting with ``#`` are ignored.

Items are :class:`~pretrain.data.samples.Sample`, or a :class:`~pretrain.data.samples.SkippedImage`
marker for a file that cannot be decoded, so a DataLoader never stops on a bad file::

    dataset = ImageFolder("photos/", transform=eval_transform(model.preprocessing))
    loader = DataLoader(dataset, batch_size=32, collate_fn=collate_samples)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from dinolab.pretrain.data.errors import DatasetError
from dinolab.pretrain.data.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, ImageDecodeError, is_image_file, load_image
from dinolab.pretrain.data.samples import Sample, SkippedImage


class ImageFolder(Dataset):
    """Images under a folder or listed in a text file (see module docstring).

    ``names`` are paths relative to ``root`` (``root / name`` opens the file); ``labels`` are ``-1``
    when unknown; ``classes`` lists class names when labels come from names or subfolders.
    ``max_side``/``max_pixels``/``min_side`` go to :func:`~pretrain.data.images.load_image`.
    """

    def __init__(
        self,
        source: str | Path,
        *,
        class_subfolders: bool = False,
        transform: Callable[[Image.Image], Any] | None = None,
        max_side: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_side: int = DEFAULT_MIN_SIDE,
    ) -> None:
        source = Path(source)
        if source.is_dir():
            self.root = source
            self.names, self.labels, self.classes = _scan_folder(source, class_subfolders)
        elif source.is_file():
            self.root = source.parent
            self.names, self.labels, self.classes = _read_file_list(source)
        else:
            raise DatasetError(f"{source}: no such folder or file list")
        if not self.names:
            kind = "folder" if source.is_dir() else "file list"
            raise DatasetError(
                f"{source}: {kind} holds no images (looked for suffixes "
                ".jpg .jpeg .png .webp .bmp .tif .tiff, any case)"
            )
        self.transform = transform
        self.max_side = max_side
        self.max_pixels = max_pixels
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.names)

    def path(self, index: int) -> Path:
        return self.root / self.names[index]

    def __getitem__(self, index: int) -> Sample | SkippedImage:
        name = self.names[index]
        try:
            image = load_image(
                self.root / name, max_side=self.max_side, max_pixels=self.max_pixels, min_side=self.min_side
            )
        except ImageDecodeError as error:
            return SkippedImage(name, error.reason)
        if self.transform is not None:
            image = self.transform(image)
        return Sample(image=image, label=self.labels[index], name=name)


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _scan_folder(root: Path, class_subfolders: bool) -> tuple[list[str], list[int], list[str]]:
    files = sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and is_image_file(path) and _visible(path, root)
    )
    if not class_subfolders:
        return files, [-1] * len(files), []
    classes = sorted({name.split("/", 1)[0] for name in files if "/" in name})
    index = {name: i for i, name in enumerate(classes)}
    labels = [index[name.split("/", 1)[0]] if "/" in name else -1 for name in files]
    return files, labels, classes


def _read_file_list(list_path: Path) -> tuple[list[str], list[int], list[str]]:
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DatasetError(f"{list_path}: a file list must be UTF-8 text, one path per line") from error
    entries: list[tuple[str, str | None]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        path, _, label = line.partition("\t")
        if not path.strip():
            raise DatasetError(f"{list_path}:{number}: empty path before the tab")
        entries.append((path.strip(), label.strip() or None))
    names = [path for path, _ in entries]
    raw_labels = [label for _, label in entries]
    if all(label is None for label in raw_labels):
        return names, [-1] * len(names), []
    if any(label is None for label in raw_labels):
        raise DatasetError(f"{list_path}: either every line has a tab and a label, or none does")
    if all(label.lstrip("-").isdigit() for label in raw_labels):  # type: ignore[union-attr]
        return names, [int(label) for label in raw_labels], []  # type: ignore[arg-type]
    classes = sorted(set(raw_labels))  # type: ignore[arg-type]
    index = {name: i for i, name in enumerate(classes)}
    return names, [index[label] for label in raw_labels], classes  # type: ignore[index]
