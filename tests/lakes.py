"""Small real-image lakes for the pipeline tests: Fashion-MNIST PNGs, scikit-image photos, planted copies, bad files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from pretrain.data.fashion_mnist import load_fashion_mnist

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def write_lake(root: Path, pool: int = 120, curated: int = 12, evals: int = 4) -> dict[str, Path]:
    """``root/{pool,curated,eval}``: the pool holds ``pool`` Fashion-MNIST images, the photos, one exact
    copy, the ``evals`` evaluation images again (leaks), a corrupt and an empty file."""
    import skimage.data

    images, _ = load_fashion_mnist("train", limit=pool + curated + evals)
    images = images.numpy()
    folders = {name: root / name for name in ("pool", "curated", "eval")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(pool):
        Image.fromarray(images[i]).save(folders["pool"] / f"fm_{i:04d}.png")
    for i in range(pool, pool + curated):
        Image.fromarray(images[i]).save(folders["curated"] / f"query_{i:04d}.png")
    for i in range(pool + curated, pool + curated + evals):
        Image.fromarray(images[i]).save(folders["eval"] / f"test_{i:04d}.png")
        Image.fromarray(images[i]).save(folders["pool"] / f"web_{i:04d}.png")
    for name in PHOTOS:
        Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB").save(
            folders["pool"] / f"{name}.jpg", quality=90)
    shutil.copy(folders["pool"] / "fm_0001.png", folders["pool"] / "mirror_of_fm_0001.png")
    (folders["pool"] / "broken.jpg").write_bytes(b"not an image at all")
    (folders["pool"] / "empty.png").write_bytes(b"")
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
