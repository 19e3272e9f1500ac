"""Small real-image lakes for the pipeline tests: Fashion-MNIST PNGs, scikit-image photos, planted copies, bad files;
mixed image formats; img2dataset's and Hugging Face's output layouts.

The Fashion-MNIST and big-lake writers are :mod:`pipelines.lake_writer`'s, shared with the demo and the benchmarks.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from dinolab.pipelines.lake_writer import write_big_lake, write_fashion_lake

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



MIXED_FORMATS = {"png": "PNG", "jpg": "JPEG", "bmp": "BMP", "gif": "GIF", "tiff": "TIFF", "webp": "WEBP"}
"""File suffix -> Pillow format of :func:`write_mixed_lake`."""


def _noise(seed: int, side: int = 40) -> Image.Image:
    """A distinct RGB image (coarse random blocks, so no two seeds look alike to any embedder)."""
    blocks = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(np.kron(blocks, np.ones((side // 8, side // 8, 1), dtype=np.uint8)))


def write_mixed_lake(root: Path, per_format: int = 3) -> dict[str, bytes]:
    """``per_format`` distinct images in each of :data:`MIXED_FORMATS` under ``root``; file name -> bytes."""
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for number, (suffix, fmt) in enumerate(sorted(MIXED_FORMATS.items())):
        for i in range(per_format):
            path = root / f"{suffix}_{i}.{suffix}"
            _noise(100 * number + i).save(path, format=fmt)
            written[path.name] = path.read_bytes()
    return written


def i2d_sample(number: int, shard: int = 0, fmt: str = "JPEG") -> tuple[str, bytes, dict, str]:
    """One sample as img2dataset writes it: key (shard number then row, 9 digits), image bytes, the json
    fields of its documented output (url, caption, key, status, sizes, ...) and its caption."""
    key = f"{shard:05d}{number:04d}"
    buffer = io.BytesIO()
    _noise(1000 * shard + number).save(buffer, format=fmt)
    caption = f"a picture number {number} of shard {shard}"
    meta = {"url": f"http://127.0.0.1:8000/images/{key}.jpg", "caption": caption, "key": key, "status": "success",
            "error_message": None, "width": 40, "height": 40, "original_width": 40, "original_height": 40,
            "exif": None, "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}
    return key, buffer.getvalue(), meta, caption


def write_i2d_webdataset(root: Path, shards: int = 2, per_shard: int = 3) -> dict[str, dict]:
    """img2dataset's ``output_format=webdataset`` folder: ``00000.tar`` (per sample ``KEY.jpg``, ``KEY.json``,
    ``KEY.txt``, in that order), ``00000.parquet`` (the json fields, no image) and ``00000_stats.json`` per
    shard. Returns key -> json fields."""
    root.mkdir(parents=True, exist_ok=True)
    metas = {}
    for shard in range(shards):
        rows = []
        with tarfile.open(root / f"{shard:05d}.tar", "w") as tar:
            for number in range(per_shard):
                key, data, meta, caption = i2d_sample(number, shard)
                for name, payload in ((f"{key}.jpg", data), (f"{key}.json", json.dumps(meta).encode()),
                                      (f"{key}.txt", caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                rows.append(meta)
                metas[key] = meta
        pq.write_table(pa.Table.from_pylist(rows), root / f"{shard:05d}.parquet")
        (root / f"{shard:05d}_stats.json").write_text(json.dumps({"count": per_shard, "successes": per_shard}))
    return metas


def write_i2d_parquet(root: Path, rows: int = 4) -> dict[str, dict]:
    """img2dataset's ``output_format=parquet`` folder: ``00000.parquet`` with the image bytes in a ``jpg``
    column beside the json fields, and ``00000_stats.json``. Returns key -> fields (image left out)."""
    root.mkdir(parents=True, exist_ok=True)
    records, metas = [], {}
    for number in range(rows):
        key, data, meta, _ = i2d_sample(number)
        records.append({**meta, "jpg": data})
        metas[key] = meta
    pq.write_table(pa.Table.from_pylist(records), root / "00000.parquet")
    (root / "00000_stats.json").write_text(json.dumps({"count": rows}))
    return metas


def write_hf_parquet(path: Path, rows: int = 4) -> list[dict]:
    """A Hugging Face image dataset exported to parquet: an ``image`` struct {bytes, path} and a ``label``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = []
    for number in range(rows):
        buffer = io.BytesIO()
        _noise(5000 + number).save(buffer, format="PNG")
        records.append({"image": {"bytes": buffer.getvalue(), "path": f"img_{number}.png"}, "label": number % 2})
    pq.write_table(pa.Table.from_pylist(records), path)
    return records
