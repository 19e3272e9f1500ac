"""Ingest: read, hash and decode every listed file once, one ``images`` row per ``files`` row.

Each file's raw bytes give ``bytes`` and ``sha256``; one decode (at most :data:`HASH_SIDE` px, JPEGs in
draft mode) gives the upright original ``width``/``height``, the ``format`` and the 64-bit ``phash`` of
the decoded image; ``provenance`` is what a tar or parquet lake says of the image
(:mod:`curate.lakes.provenance`). No file raises: unusable ones get status ``error`` (or ``filtered`` when too small)::

    images = ingest_partition(files_table, IngestConfig(min_side=32))
    summarize(images)   # {'ok': 510, 'filtered': 1, 'error': 1}
    ok = images.filter(pyarrow.compute.equal(images["status"], "ok"))
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import imagehash
import pyarrow as pa
from PIL import ExifTags, Image

from dinolab.curate.lakes import RefusedFile, RefusedMember, provenance, read_partition
from dinolab.curate.lakes import embeddings as lake_embeddings
from dinolab.pretrain.data.images import ImageDecodeError, decode_image
from dinolab.schemas.config import IngestConfig
from dinolab.schemas.tables import FILES, IMAGES, utc_now

HASH_SIDE = 256
"""Longer side images are decoded at (at most) for hashing: phash sees 32x32, and 256 keeps panoramas up to
8:1 at 32+ rows while letting JPEGs decode at 1/2 to 1/8 scale (within 2 bits of a full-size phash)."""

STATUSES = ("ok", "filtered", "error")

_RESULT_COLUMNS = ("bytes", "sha256", "width", "height", "format", "phash", "status", "error")


@dataclass
class IngestResult:
    """The ingest columns of one file (None where unknown)."""

    status: str = "error"
    error: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    phash: str | None = None


def read_bytes(uri: str) -> bytes:
    """The raw content of a local file (URLs, tar members and parquet rows: :func:`curate.lakes.read_partition`)."""
    return Path(uri).read_bytes()


def ingest_file(uri: str, config: IngestConfig) -> IngestResult:
    """Read, hash and decode one local file; never raises."""
    try:
        data: bytes | BaseException = read_bytes(uri)
    except Exception as error:  # noqa: BLE001 - reported in the row
        data = error
    return ingest_data(uri, data, config)


def read_error(error: BaseException) -> str:
    """The ``error`` column of a file that could not be read."""
    if isinstance(error, RefusedMember):
        return f"refused tar member: {error}"
    if isinstance(error, RefusedFile):
        return f"skipped: {error}"
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "a directory, not a file"
    return f"unreadable file ({type(error).__name__}: {_one_line(error)})"  # permission, I/O and fsspec errors


def ingest_data(uri: str, data: bytes | BaseException, config: IngestConfig) -> IngestResult:
    """Hash and decode the bytes of ``uri`` (or report why they could not be read); never raises."""
    if isinstance(data, BaseException):
        return IngestResult(error=read_error(data))
    result = IngestResult(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    try:
        decoded = decode_image(data, uri, max_side=HASH_SIDE, max_pixels=config.max_pixels, min_side=config.min_side)
        result.phash = str(imagehash.phash(decoded.image))
    except ImageDecodeError as error:
        result.status, result.error = ("filtered" if error.filtered else "error"), error.reason
        if error.filtered:
            result.width, result.height, result.format = _header(data)
        return result
    except Exception as error:  # noqa: BLE001 - one bad file never loses the partition
        result.error = f"hashing failed ({type(error).__name__}: {_one_line(error)})"
        return result
    result.status, result.width, result.height, result.format = "ok", decoded.width, decoded.height, decoded.format
    return result


def ingest_partition(files: pa.Table, config: IngestConfig, storage_options: Mapping[str, Any] | None = None,
                     on_read: Callable[[str, bytes], None] | None = None, ingested_at: datetime | None = None
                     ) -> pa.Table:
    """The ``images`` table of a ``files`` table (one row per file, in input order).

    Each container (tar, parquet file) and store is opened once (:func:`curate.lakes.read_partition`);
    local files are read by :func:`read_bytes`. ``on_read(uri, data)`` sees every file's bytes as read
    (the ingest stage keeps remote ones, :mod:`curate.fetched`). A precomputed embedding's row
    (:mod:`curate.lakes.embeddings`) is ``ok`` without reading its image. ``ingested_at`` (default: now, UTC) fills
    the column of that name.
    """
    ingested_at = ingested_at or utc_now()
    files = files.select(FILES.schema.names).cast(FILES.schema)
    uris = files.column("uri").to_pylist()
    lake_metadata: dict[str, dict[str, Any]] = {}
    found = {uri: IngestResult(status="ok") for uri in uris if lake_embeddings.is_row(uri)}  # its vector is the lake
    for uri, data in read_partition([uri for uri in uris if uri not in found], storage_options,
                                    read_file=lambda path: read_bytes(path), provenance=lake_metadata):
        if on_read is not None and isinstance(data, bytes):
            on_read(uri, data)
        found[uri] = ingest_data(uri, data, config)
    results = [found[uri] for uri in uris]
    columns: dict[str, Any] = {name: files.column(name) for name in FILES.schema.names}
    for name in _RESULT_COLUMNS:
        columns[name] = [getattr(result, name) for result in results]
    columns["provenance"] = [provenance.as_text(lake_metadata.get(uri, {})) for uri in uris]
    columns["ingested_at"] = [ingested_at] * len(results)
    return pa.table(columns, schema=IMAGES.schema)


def summarize(images: pa.Table) -> dict[str, int]:
    """Rows per status, every status of :data:`STATUSES` present (0 if none)."""
    counts = Counter(images.column("status").to_pylist())
    return {status: counts.get(status, 0) for status in STATUSES} | dict(counts)


def _header(data: bytes) -> tuple[int | None, int | None, str | None]:
    """Upright ``(width, height, format)`` from the header alone (for filtered images, which are not decoded)."""
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):
            width, height = height, width
        return width, height, image.format
    except Exception:  # noqa: BLE001
        return None, None, None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
