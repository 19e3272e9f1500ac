"""Shard stage logic: selected images, with their original bytes, into webdataset tar shards + a wids index.

Each sample becomes two contiguous tar members, ``<key>.<ext>`` (the source file's bytes, never
re-encoded) then ``<key>.json`` (its metadata, :data:`META_FIELDS`: every field always present with
one type). The member extension is the image format's (:func:`image_extension`: JPEG is ``jpg`` whatever
the file was called) and :func:`plan_shards` keeps each format in shards of its own, so every sample of
a shard has the same members (what Hugging Face ``datasets`` needs of a webdataset). Shards are written
byte-identically on every run (fixed mtime, owner and mode) and atomically (temporary file +
``os.replace``; on an object store one put of the whole tar, see :mod:`curate.output`), and are
described by a wids ``index.json`` beside them whose shard urls are relative to it::

    plan = plan_shards(keys, sizes, max_samples=1000, max_bytes=1 << 30, kinds=extensions)
    infos = [write_shard(out / shard_name(i), [samples[r] for r in rows]) for i, rows in enumerate(plan)]
    write_index(out / "index.json", shard_index(infos, name="curated"))

Readers: ``webdataset.WebDataset(urls, shardshuffle=False)`` streams them; ``wids.ShardListDataset(str(index),
cache_dir=..., transformations=[])`` gives random access (see :func:`shard_index` for how wids resolves urls);
docs/curation.md ("Using the output") shows each reader, Hugging Face ``datasets`` included.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import BinaryIO
from urllib.parse import urlparse

from dinolab.core.storage import INDEX_KIND
from dinolab.curate import output
from dinolab.curate.lakes.uris import source_name
from dinolab.curate.output import Location
from dinolab.schemas.tables import utc_now

SHARD_MTIME = 0
"""mtime of every tar member (the epoch), so that a rerun writes the same bytes."""
MEMBER_MODE = 0o444
OWNER = ""  # uname and gname of every member; uid and gid are 0
USTAR_NAME_MAX = 100  # a USTAR member name without a "/" holds at most 100 bytes

_KEY = re.compile(r"[A-Za-z0-9_-]+")
_EXT = re.compile(r"[a-z0-9]+")
IMAGE_EXTENSIONS = frozenset(
    "jpg jpeg jpe jfif png apng gif webp tif tiff bmp dib ppm pgm pbm pnm ico jp2 j2k avif heic heif tga".split()
)
"""File suffixes taken as the image member's extension when the image's format is not known."""
_FORMAT_EXTENSIONS = {"jpeg": "jpg", "mpo": "jpg", "jpeg2000": "jp2"}
"""Pillow format names (lower case) whose member extension is not the name itself."""
_SUFFIX_ALIASES = {"jpeg": "jpg", "jpe": "jpg", "jfif": "jpg", "tif": "tiff", "dib": "bmp"}
"""File suffixes of one format spelled one way, for files whose format is not known."""

META_FIELDS: dict[str, tuple[type, object]] = {
    "key": (str, ""),
    "uri": (str, ""),
    "sha256": (str, ""),
    "width": (int, -1),
    "height": (int, -1),
    "format": (str, ""),
    "group": (int, -1),
    "cluster": (int, -1),
    "method": (str, ""),
    "query_key": (str, ""),
    "similarity": (float, -2.0),
    "provenance": (str, "{}"),
}
"""The ``json`` member of a curated sample: each field's type and the value it takes when unknown.

``key`` the sample key; ``uri`` the source (``files`` table); ``sha256``, ``width``, ``height``, ``format``
from ingest; ``group`` the duplicate group (dedup); ``cluster`` the level-1 cluster (-1: not sampled by
cluster); ``method`` how it was selected; ``query_key`` and ``similarity`` the curated image that retrieved
it and their cosine similarity ("" and -2.0, outside [-1, 1], when none); ``provenance`` the per-sample
metadata the lake gave it, as JSON text (``"{}"`` when none; see :mod:`curate.lakes.provenance`)."""


@dataclass(frozen=True)
class ShardSample:
    """One selected image: its key, original file bytes, member extension and metadata (the json member)."""

    key: str
    data: bytes
    ext: str
    meta: dict

    def __post_init__(self) -> None:
        check_key(self.key)
        if not _EXT.fullmatch(self.ext) or self.ext == "json":
            raise ValueError(f"{self.key}: image extension must be [a-z0-9]+ and not 'json', got {self.ext!r}")
        if len(f"{self.key}.{self.ext}") > USTAR_NAME_MAX or len(f"{self.key}.json") > USTAR_NAME_MAX:
            raise ValueError(f"{self.key}: key too long for a USTAR member name ({USTAR_NAME_MAX} bytes)")

    @property
    def member(self) -> str:
        """The image's tar member name, ``key.ext``."""
        return f"{self.key}.{self.ext}"

    def meta_bytes(self) -> bytes:
        """``meta`` as compact UTF-8 JSON with sorted keys (NaN/inf are refused: they are not JSON)."""
        text = json.dumps(self.meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode()


@dataclass(frozen=True)
class ShardInfo:
    """A written shard: file name, sample count, size in bytes and md5 hex digest (as in a wids index)."""

    name: str
    nsamples: int
    filesize: int
    md5sum: str


def check_key(key: str) -> str:
    """``key`` if it is a valid sample key ([A-Za-z0-9_-]+: no dot, so webdataset splits members right)."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"invalid sample key {key!r}: keys are [A-Za-z0-9_-]+")
    return key


def image_extension(uri: str, format: str | None) -> str:
    """Member extension of an image: one per Pillow format (``JPEG`` -> ``jpg``, ``PNG`` -> ``png``, ``TIFF``
    -> ``tiff``, else the format lower-cased), whatever the file's suffix; a file of unknown format keeps its
    suffix (lower-cased, ``jpeg``/``jpe``/``jfif`` as ``jpg``, ``tif`` as ``tiff``). The name of a tar member
    or parquet row is that of the member or row, not of its container.
    """
    name = (format or "").strip().lower()
    name = _FORMAT_EXTENSIONS.get(name, name)
    if _EXT.fullmatch(name) and name != "json":
        return name
    path = source_name(uri)
    suffix = PurePosixPath(urlparse(path).path if "://" in path else path).suffix.lower().lstrip(".")
    if suffix in IMAGE_EXTENSIONS:
        return _SUFFIX_ALIASES.get(suffix, suffix)
    raise ValueError(f"{uri}: no image extension (suffix {suffix!r}, format {format!r})")


def sample_meta(**fields: object) -> dict:
    """The ``json`` member of a sample: every field of :data:`META_FIELDS`, unknown ones (``None``) at
    their default, each of its one type; :class:`ValueError` for a field not in :data:`META_FIELDS`."""
    unknown = sorted(set(fields) - set(META_FIELDS))
    if unknown:
        raise ValueError(f"not sample metadata fields: {unknown}")
    meta = {}
    for name, (kind, default) in META_FIELDS.items():
        value = fields.get(name)
        meta[name] = default if value is None else kind(value)
    return meta


def plan_shards(keys: Sequence[str], sizes: Sequence[int], max_samples: int, max_bytes: int,
                kinds: Sequence[str] | None = None) -> list[list[int]]:
    """Row indices of each shard: samples in the given order, filling consecutive shards.

    A shard closes once it holds ``max_samples`` samples, or before a sample whose bytes would push its
    total past ``max_bytes``; a sample larger than ``max_bytes`` gets a shard of its own. With ``kinds``
    (each sample's image extension) no shard mixes two kinds: the kinds come one after another in sorted
    order, each one's samples in the given order. Keys must be valid and unique (a repeated key would
    merge two samples in a reader).
    """
    if len(keys) != len(sizes) or (kinds is not None and len(kinds) != len(keys)):
        raise ValueError(f"{len(keys)} keys but {len(sizes)} sizes" + (f" and {len(kinds)} kinds" if kinds else ""))
    if max_samples < 1 or max_bytes < 1:
        raise ValueError(f"max_samples and max_bytes must be positive, got {max_samples}, {max_bytes}")
    for key in keys:
        check_key(key)
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate sample keys")
    rows = list(range(len(keys)))
    if kinds is not None:
        rows.sort(key=lambda row: kinds[row])  # stable: each kind keeps the given order
    shards: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for row in rows:
        size = sizes[row]
        if size < 0:
            raise ValueError(f"{keys[row]}: negative size {size}")
        if current and (len(current) >= max_samples or current_bytes + size > max_bytes
                        or (kinds is not None and kinds[row] != kinds[current[0]])):
            shards.append(current)
            current, current_bytes = [], 0
        current.append(row)
        current_bytes += size
    if current:
        shards.append(current)
    return shards


def shard_name(index: int) -> str:
    """File name of shard ``index``: ``shard-000000.tar``."""
    if index < 0:
        raise ValueError(f"negative shard index {index}")
    return f"shard-{index:06d}.tar"


def _member(name: str, size: int) -> tarfile.TarInfo:
    """A regular-file TarInfo with the fixed mtime, mode and owner."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = SHARD_MTIME
    info.mode = MEMBER_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = OWNER
    return info


def _write_tar(stream: BinaryIO, samples: Sequence[ShardSample]) -> None:
    """Write ``samples`` as an uncompressed USTAR tar: ``key.ext`` then ``key.json`` for each, in order."""
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            meta = sample.meta_bytes()
            tar.addfile(_member(sample.member, len(sample.data)), io.BytesIO(sample.data))
            tar.addfile(_member(f"{sample.key}.json", len(meta)), io.BytesIO(meta))


def tar_bytes(samples: Sequence[ShardSample]) -> bytes:
    """The shard of ``samples`` as bytes (the samples' data is in memory already: a shard is at most twice)."""
    buffer = io.BytesIO()
    _write_tar(buffer, samples)
    return buffer.getvalue()


def write_shard(path: Location, samples: Sequence[ShardSample]) -> ShardInfo:
    """Write one shard atomically (a local path or a :class:`~curate.output.RemotePath`) and byte-identically
    on every run; its :class:`ShardInfo`.

    Uses Python's ``tarfile`` with explicit ``TarInfo`` rather than webdataset's ``TarWriter``, which
    (1.0.2) writes each sample's members in sorted-extension order (``json`` before ``png``), ignores its
    ``format`` argument (tarfile's PAX default) and stamps a ``bigdata`` owner.
    """
    if not samples:
        raise ValueError(f"{path}: a shard needs at least one sample")
    keys = [sample.key for sample in samples]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{path}: duplicate sample keys")
    path = output.location(path)
    data = tar_bytes(samples)
    output.write_bytes(path, data, fsync=True)
    return ShardInfo(name=path.name, nsamples=len(samples), filesize=len(data), md5sum=hashlib.md5(data).hexdigest())


def shard_index(infos: Sequence[ShardInfo], name: str, base: str | None = None) -> dict:
    """A wids shard index (``wids-shard-index-v1``) of ``infos``, urls relative to the index file.

    wids 0.1.11 resolves a relative url against the directory of the index path it was given and ignores
    a top-level ``base``, so ``base`` is only written when passed (informational for other readers).
    """
    index = {
        "__kind__": INDEX_KIND,
        "wids_version": 1,
        "name": name,
        "shardlist": [
            {"url": info.name, "nsamples": info.nsamples, "md5sum": info.md5sum, "filesize": info.filesize}
            for info in infos
        ],
    }
    if base is not None:
        index["base"] = base
    return index


def index_bytes(index: dict) -> bytes:
    """Deterministic JSON of an index: sorted keys, indent 1, trailing newline."""
    return (json.dumps(index, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode()


def write_index(path: Location, index: dict) -> None:
    """Write ``index`` (see :func:`index_bytes`) atomically to ``path``."""
    output.write_bytes(output.location(path), index_bytes(index), fsync=True)


def shard_rows(shard: str, samples: Sequence[ShardSample], written_at: datetime | None = None) -> list[dict]:
    """Rows of the ``shards`` table for one shard: key, shard file name, image member, position in it and
    ``written_at`` (default: now, UTC)."""
    written_at = written_at or utc_now()
    return [
        {"key": sample.key, "shard": shard, "member": sample.member, "index": position, "written_at": written_at}
        for position, sample in enumerate(samples)
    ]
