"""Image lakes written as files from data that installs offline: the demo lake (:mod:`pipelines.demo_lake`),
the tests' small lakes (``tests/lakes.py``) and the benchmarks' lakes share these writers.

Example::

    folders = write_fashion_lake(Path("/tmp/lake"), pool=100, curated=10, evals=4)
    folders["pool"], folders["curated"], folders["eval"]
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

JPEG_QUALITY = 50
"""Quality of the JPEG files :func:`save_image` writes (planted re-encoded copies)."""


def save_image(folder: Path, name: str, image: Image.Image, fmt: str = "PNG") -> str:
    """``image`` as ``folder/name.png`` (or ``.jpg`` for ``fmt="JPEG"``); returns the file name."""
    path = folder / f"{name}.{'jpg' if fmt == 'JPEG' else 'png'}"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": JPEG_QUALITY} if fmt == "JPEG" else {}))
    path.write_bytes(buffer.getvalue())
    return path.name


def write_fashion_lake(root: Path, pool: int, curated: int, evals: int | None = None,
                       digits: int = 4) -> dict[str, Path]:
    """Fashion-MNIST training images as PNG files, numbered by their index in the split:

    ``root/pool/fm_*.png`` (the first ``pool``), ``root/curated/query_*.png`` (the next ``curated``) and,
    when ``evals`` is given, ``root/eval/test_*.png`` (the next ``evals``), each planted in the pool again
    as ``web_*.png`` (leaks of the evaluation set). Raises ValueError when the split holds too few images.
    """
    from dinolab.pretrain.data.fashion_mnist import load_fashion_mnist

    wanted = pool + curated + (evals or 0)
    images, _ = load_fashion_mnist("train", limit=wanted)
    if len(images) < wanted:
        raise ValueError(f"Fashion-MNIST train has {len(images)} images; asked for {wanted}")
    images = images.numpy()
    folders = {"pool": root / "pool", "curated": root / "curated"}
    if evals is not None:
        folders["eval"] = root / "eval"
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)

    def write(folder: Path, prefix: str, first: int, count: int) -> None:
        for i in range(first, first + count):
            save_image(folder, f"{prefix}_{i:0{digits}d}", Image.fromarray(images[i]))

    write(folders["pool"], "fm", 0, pool)
    write(folders["curated"], "query", pool, curated)
    if evals is not None:
        write(folders["eval"], "test", pool + curated, evals)
        write(folders["pool"], "web", pool + curated, evals)
    return folders


def write_big_lake(root: Path, count: int, side: int = 1024, seed: int = 0) -> int:
    """``count`` uncompressed BMP photos-sized images (``side``², 3 bytes a pixel); returns their total bytes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    total = 0
    for i in range(count):
        image = np.roll(base, 7 * i, axis=1)
        image[: 16 + i % 64] = i % 256  # different files, different hashes
        path = root / f"big_{i:05d}.bmp"
        Image.fromarray(image).save(path)
        total += path.stat().st_size
    return total
