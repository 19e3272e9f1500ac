"""Small real-image lakes for the pipeline tests: Fashion-MNIST PNGs, scikit-image photos, planted copies, bad files.

The writers themselves are :mod:`pipelines.lake_writer`'s, shared with the demo and the benchmarks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.lake_writer import write_big_lake, write_fashion_lake

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")

__all__ = ["PHOTOS", "write_big_lake", "write_lake"]


def write_lake(root: Path, pool: int = 120, curated: int = 12, evals: int = 4) -> dict[str, Path]:
    """``root/{pool,curated,eval}``: the pool holds ``pool`` Fashion-MNIST images, the photos, one exact
    copy, the ``evals`` evaluation images again (leaks), a corrupt and an empty file."""
    import skimage.data

    folders = write_fashion_lake(root, pool, curated, evals)
    for name in PHOTOS:
        Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB").save(
            folders["pool"] / f"{name}.jpg", quality=90)
    shutil.copy(folders["pool"] / "fm_0001.png", folders["pool"] / "mirror_of_fm_0001.png")
    (folders["pool"] / "broken.jpg").write_bytes(b"not an image at all")
    (folders["pool"] / "empty.png").write_bytes(b"")
    return folders
