"""What copy detection needs of one image, computed once per image: local features and perceptual hashes.

The dedup stage computes them per partition of the ``images`` table and keeps them under
``OUT/copydetect/part-NNNNN.npz`` (written to a temporary name, then renamed), so a rerun, or a global stage
that failed later, never decodes an image twice. The cache holds plain arrays only (read with
``allow_pickle=False``: nothing in it can run code) and the digest of the rows it was built from; a part
that does not load, or was built from other rows (a changed partitioning), is recomputed::

    features = image_features(Image.open(path))     # ImageFeatures(local=..., hashes={"phash": ..., "dhash": ...})
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass

import numpy as np

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from dinolab.curate import output
from dinolab.curate.copydetect.hashes import image_hashes
from dinolab.curate.copydetect.local import LocalFeatures, describe
from dinolab.curate.lakes import Reader, read_partition
from dinolab.curate.output import Location
from dinolab.pretrain.data.images import ImageDecodeError, decode_image

DECODE_SIDE = 1024
FEATURE_DIR = "copydetect"


@dataclass
class ImageFeatures:
    local: LocalFeatures
    hashes: dict[str, str]


def image_features(image: Image.Image) -> ImageFeatures:
    image = image.convert("RGB")
    return ImageFeatures(describe(image), image_hashes(image))


def decoded_features(uri: str, data: bytes | BaseException, max_pixels: int) -> ImageFeatures | None:
    """Features of one file's bytes, or ``None`` when it no longer reads or decodes."""
    if isinstance(data, BaseException):
        return None
    try:
        decoded = decode_image(data, uri, max_side=DECODE_SIDE, max_pixels=max_pixels, min_side=1)
    except (OSError, ImageDecodeError):
        return None
    return image_features(decoded.image)


def part_path(out: Location, partition: int) -> Location:
    return out / FEATURE_DIR / f"part-{partition:05d}.npz"


def rows_digest(keys: list[str], uris: list[str], sha256: list[str | None], max_pixels: int) -> str:
    """What a cache part was built from: its rows (key, uri, content hash) and the decode limit."""
    digest = hashlib.sha256(str(max_pixels).encode())
    for row in zip(keys, uris, sha256):
        digest.update(repr(row).encode())
    return digest.hexdigest()


def _ragged(prefix: str, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays of different first dimensions as one concatenation and their lengths."""
    return {f"{prefix}_lengths": np.array([len(a) for a in arrays], dtype=np.int64),
            f"{prefix}_values": np.concatenate(arrays) if arrays else np.zeros((0,), np.float32)}


def _split(stored, prefix: str) -> list[np.ndarray]:
    ends = np.cumsum(stored[f"{prefix}_lengths"])
    return np.split(stored[f"{prefix}_values"], ends[:-1]) if len(ends) else []


def features_arrays(features: dict[str, ImageFeatures], source: str) -> dict[str, np.ndarray]:
    """``features`` as named plain arrays (no Python objects), with the digest of their ``source`` rows."""
    found = list(features.values())
    mirrors = [f.local.mirror for f in found]
    grays = [f.local.gray for f in found]
    return {
        "source": np.array(source), "keys": np.array(list(features), dtype=str),
        **{name: np.array([f.hashes[name] for f in found], dtype=str) for name in ("phash", "dhash")},
        **_ragged("xy", [f.local.xy for f in found]), **_ragged("descriptors", [f.local.descriptors for f in found]),
        **_ragged("mirror_xy", [m.xy for m in mirrors]), **_ragged("mirror_descriptors", [m.descriptors for m in mirrors]),
        "gray_shapes": np.array([g.shape for g in grays], dtype=np.int64).reshape(-1, 2),
        "gray_values": np.concatenate([g.ravel() for g in grays]) if grays else np.zeros((0,), np.uint8),
    }


def arrays_features(stored) -> dict[str, ImageFeatures]:
    """The inverse of :func:`features_arrays`."""
    keys = stored["keys"].tolist()
    shapes = stored["gray_shapes"]
    flat = np.split(stored["gray_values"], np.cumsum(shapes.prod(axis=1))[:-1]) if len(keys) else []
    grays = [values.reshape(shape) for values, shape in zip(flat, shapes)]
    columns = zip(_split(stored, "xy"), _split(stored, "descriptors"), _split(stored, "mirror_xy"),
                  _split(stored, "mirror_descriptors"), grays)
    features = {}
    for row, (key, (xy, descriptors, mirror_xy, mirror_descriptors, gray)) in enumerate(zip(keys, columns)):
        mirror = LocalFeatures(mirror_xy, mirror_descriptors, np.ascontiguousarray(gray[:, ::-1]))
        features[key] = ImageFeatures(LocalFeatures(xy, descriptors, gray, mirror),
                                      {name: str(stored[name][row]) for name in ("phash", "dhash")})
    return features


def read_cached(path: Location, source: str) -> dict[str, ImageFeatures] | None:
    """The cache part at ``path`` if it holds plain arrays built from ``source``; ``None`` otherwise."""
    if not output.is_file(path):
        return None
    try:
        with np.load(io.BytesIO(output.read_bytes(path)), allow_pickle=False) as stored:
            if str(stored["source"]) != source:
                return None
            return arrays_features(stored)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def partition_features(out: Location, partition: int, images: pa.Table, max_pixels: int,
                       storage_options: dict | None = None, read: Reader | None = None) -> dict[str, ImageFeatures]:
    """Features of the ``ok`` pool and evaluation rows of one ``images`` partition, by key (cached on disk).

    Files are read by ``read`` (default: the lake, :func:`curate.lakes.read_partition`)."""
    rows = images.filter(pc.and_(pc.equal(images["status"], "ok"), pc.is_in(images["role"], pa.array(["pool", "eval"]))))
    keys, uris = rows.column("key").to_pylist(), rows.column("uri").to_pylist()
    source = rows_digest(keys, uris, rows.column("sha256").to_pylist(), max_pixels)
    path = part_path(out, partition)
    cached = read_cached(path, source)
    if cached is not None:
        return cached
    contents = dict(read(uris) if read is not None else read_partition(uris, storage_options))
    features = {}
    for key, uri in zip(keys, uris):
        found = decoded_features(uri, contents.get(uri, KeyError(uri)), max_pixels)
        if found is not None:
            features[key] = found
    output.publish(path, lambda stream: np.savez(stream, allow_pickle=False, **features_arrays(features, source)))
    return features
