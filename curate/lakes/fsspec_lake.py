"""Files behind fsspec URLs (``s3://``, ``gs://``, ``http(s)://``, ``file://`` ...): open, read in batches, list by prefix.

One filesystem per protocol and partition (fsspec also caches instances per process); files are read
:data:`BATCH` at a time with ``cat_ranges``, concurrently on asynchronous stores (s3fs, gcsfs, http), and
no name is ever expanded as a glob. Storage options go to every protocol but ``file``::

    for url, data in read_files(["s3://bucket/a.jpg", "s3://bucket/b.jpg"], {"endpoint_url": url}):
        ...   # data: bytes, or the exception that reading it raised
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from dinolab.core import storage
from dinolab.curate.lakes.uris import LakeError, protocol

BATCH = 32
"""Files fetched together (bounded memory: one batch of raw bytes at a time)."""
CONTAINER_BLOCK = 4 * 2**20
"""Read-ahead of an opened container (tar, parquet): headers and members come in 4 MiB reads, not 512-byte ones."""


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None):
    """The fsspec filesystem of ``url`` (:func:`core.storage.filesystem`); :class:`LakeError` when none reaches it."""
    try:
        return storage.filesystem(url, storage_options)
    except storage.StorageError as error:
        raise LakeError(str(error)) from None


def open_binary(url: str, storage_options: Mapping[str, Any] | None = None) -> IO[bytes]:
    """A seekable binary file of ``url`` with read-ahead (for containers read member by member)."""
    fs = filesystem(url, storage_options)
    path = fs._strip_protocol(url)
    if not storage.is_remote(url):
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    return fs.open(path, "rb", block_size=CONTAINER_BLOCK, cache_type="readahead")


def read_files(urls: Sequence[str], storage_options: Mapping[str, Any] | None = None) -> Iterator[tuple[str, bytes | BaseException]]:
    """``(url, bytes or exception)`` for each of ``urls``, in order, one filesystem per protocol."""
    by_protocol: dict[str, list[str]] = {}
    for url in urls:
        by_protocol.setdefault(protocol(url), []).append(url)
    for group in by_protocol.values():
        try:
            fs = filesystem(group[0], storage_options)
        except LakeError as error:
            for url in group:
                yield url, OSError(str(error))
            continue
        for start in range(0, len(group), BATCH):
            batch = group[start : start + BATCH]
            paths = [fs._strip_protocol(url) for url in batch]
            try:
                contents = fs.cat_ranges(paths, None, None, on_error="return", **_single_request(fs))
            except Exception as error:  # noqa: BLE001 - the store failed the whole batch
                contents = [error] * len(batch)
            for url, data in zip(batch, contents):
                if isinstance(data, BaseException) or isinstance(data, bytes):
                    yield url, data
                else:
                    yield url, bytes(data)


def _single_request(fs) -> dict[str, Any]:
    """Read each image in one GET: s3fs otherwise asks for the size first (a HEAD) to split large files."""
    import inspect

    try:
        parameters = inspect.signature(fs._cat_file).parameters
    except (AttributeError, TypeError, ValueError):
        return {}
    return {"max_concurrency": 1} if "max_concurrency" in parameters else {}


def split_prefix(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[list[str], bool]:
    """The sub-prefixes right under ``url`` (each listed by its own task) and whether files sit at its top level.

    One delimited listing of the top level; :class:`LakeError` when nothing is there.
    """
    fs = filesystem(url, storage_options)
    root = fs._strip_protocol(url).rstrip("/")
    try:
        entries = fs.ls(root, detail=True, refresh=True) if _accepts_refresh(fs) else fs.ls(root, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    scheme = protocol(url)
    folders = sorted(f"{scheme}://{entry['name'].rstrip('/')}" if "://" not in entry["name"] else entry["name"].rstrip("/")
                     for entry in entries if entry.get("type") == "directory" and entry["name"].rstrip("/") != root)
    files = any(entry.get("type") != "directory" for entry in entries)
    if not folders and not files:
        raise LakeError(f"{url}: no such folder or prefix (or nothing in it)")
    return folders, files


def _accepts_refresh(fs) -> bool:
    import inspect

    try:
        parameters = inspect.signature(fs.ls).parameters
    except (TypeError, ValueError):
        return False
    return "refresh" in parameters


def list_files(url: str, storage_options: Mapping[str, Any] | None = None, recursive: bool = True) -> list[str]:
    """Every file under prefix ``url`` (recursive: one paginated flat listing, ``fs.find``), or only its top
    level; or the files a glob pattern matches. URLs in the listing's (sorted) order."""
    fs = filesystem(url, storage_options)
    scheme = protocol(url)
    if any(char in url.split("://", 1)[-1] for char in "*?["):
        found = fs.glob(url, detail=True)
        paths = [path for path, info in found.items() if info.get("type") != "directory"]
    elif recursive:
        paths = fs.find(fs._strip_protocol(url).rstrip("/"))
    else:
        root = fs._strip_protocol(url).rstrip("/")
        paths = [entry["name"] for entry in fs.ls(root, detail=True) if entry.get("type") != "directory"]
    return sorted(path if "://" in path else f"{scheme}://{path.lstrip('/') if scheme != 'file' else path}"
                  for path in paths)
