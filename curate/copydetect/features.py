"""What copy detection needs of one image, computed once per image: local features and perceptual hashes.

The dedup stage computes them per partition of the ``images`` table and keeps them under
``OUT/copydetect/part-NNNNN.pkl`` (written to a temporary name, then renamed: a part that exists is done),
so a rerun, or a global stage that failed later, never decodes an image twice::

    features = image_features(Image.open(path))     # ImageFeatures(local=..., hashes={"phash": ..., "dhash": ...})
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from curate import output
from curate.copydetect.hashes import image_hashes
from curate.copydetect.local import LocalFeatures, describe
from curate.lakes import Reader, read_partition
from curate.output import Location
from pretrain.data.images import ImageDecodeError, decode_image

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
    return out / FEATURE_DIR / f"part-{partition:05d}.pkl"


def partition_features(out: Location, partition: int, images: pa.Table, max_pixels: int,
                       storage_options: dict | None = None, read: Reader | None = None) -> dict[str, ImageFeatures]:
    """Features of the ``ok`` pool and evaluation rows of one ``images`` partition, by key (cached on disk).

    Files are read by ``read`` (default: the lake, :func:`curate.lakes.read_partition`)."""
    path = part_path(out, partition)
    if output.is_file(path):
        return pickle.loads(output.read_bytes(path))
    rows = images.filter(pc.and_(pc.equal(images["status"], "ok"), pc.is_in(images["role"], pa.array(["pool", "eval"]))))
    keys, uris = rows.column("key").to_pylist(), rows.column("uri").to_pylist()
    contents = dict(read(uris) if read is not None else read_partition(uris, storage_options))
    features = {}
    for key, uri in zip(keys, uris):
        found = decoded_features(uri, contents.get(uri, KeyError(uri)), max_pixels)
        if found is not None:
            features[key] = found
    output.write_bytes(path, pickle.dumps(features, protocol=pickle.HIGHEST_PROTOCOL))
    return features
