"""Where a run's outputs go: a local folder or an fsspec URL (``s3://bucket/prefix``), behind one set of calls.

A local ``OUT`` is a :class:`~pathlib.Path` and every call does what the stages always did (a hidden
temporary file beside the target, then ``os.replace``). A remote ``OUT`` is a :class:`RemotePath`: the URL
plus the run's storage options, picklable, so task arguments carry the options to the workers (its repr
and ``str`` show no option). On an object store each object is written completely in one put
(``fs.pipe_file``): it becomes visible only once its upload completes, so an object that exists is
complete and resuming is a listing, as locally::

    out = location("s3://bucket/run", {"endpoint_url": "http://127.0.0.1:9000"})
    write_bytes(join(out, "tables", "files", "part-00000.parquet"), data)
    names(join(out, "tables", "files"), "part-*.parquet")   # ['part-00000.parquet']
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from curate.lakes.fsspec_lake import filesystem


@dataclass(frozen=True)
class RemotePath:
    """An object or prefix of a store, ``url`` (no trailing ``/``), with the storage options that reach it."""

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", self.url.rstrip("/"))

    def __truediv__(self, name: str) -> RemotePath:
        return RemotePath(f"{self.url}/{name}", self.storage_options)

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def parent(self) -> RemotePath:
        return RemotePath(self.url.rsplit("/", 1)[0], self.storage_options)

    def filesystem(self):
        """The fsspec filesystem and this path's key in it (fsspec caches one instance per options)."""
        fs = filesystem(self.url, self.storage_options)
        return fs, fs._strip_protocol(self.url)


Location = Path | RemotePath


def is_url(text: str | os.PathLike) -> bool:
    """Whether ``text`` names a remote store (``s3://``, ``memory://``...; ``file://`` is local)."""
    return isinstance(text, str) and "://" in text and not text.startswith("file://")


def location(out: str | os.PathLike | RemotePath, storage_options: Mapping[str, Any] | None = None) -> Location:
    """``out`` as a :data:`Location`: a :class:`RemotePath` for a URL (with ``storage_options``), else a Path."""
    if isinstance(out, RemotePath):
        return out
    if is_url(out):
        return RemotePath(str(out), dict(storage_options or {}))
    return Path(str(out).removeprefix("file://"))


def join(base: str | os.PathLike | RemotePath, *names: str) -> Location:
    path = location(base)
    for name in names:
        path = path / name
    return path


def _refreshed(path: RemotePath):
    """The filesystem and key of ``path``, its cached listings dropped (other processes write the store)."""
    fs, key = path.filesystem()
    fs.invalidate_cache(key)
    return fs, key


def exists(path: Location) -> bool:
    """Whether ``path`` is a file or folder (a prefix holding objects, on a store)."""
    if isinstance(path, RemotePath):
        fs, key = _refreshed(path)
        return fs.exists(key)
    return Path(path).exists()


def is_file(path: Location) -> bool:
    if isinstance(path, RemotePath):
        fs, key = _refreshed(path)
        return fs.isfile(key)
    return Path(path).is_file()


def size(path: Location) -> int | None:
    """Size in bytes of the file at ``path``, ``None`` when there is none."""
    if isinstance(path, RemotePath):
        fs, key = _refreshed(path)
        try:
            info = fs.info(key)
        except FileNotFoundError:
            return None
        return int(info["size"]) if info.get("type") == "file" else None
    return Path(path).stat().st_size if Path(path).is_file() else None


def names(folder: Location, pattern: str = "*") -> list[str]:
    """Sorted names of the files right in ``folder`` that match ``pattern`` (none when it does not exist)."""
    if isinstance(folder, RemotePath):
        fs, key = _refreshed(folder)
        try:
            entries = fs.ls(key, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = [entry["name"].rstrip("/").rsplit("/", 1)[-1] for entry in entries if entry.get("type") != "directory"]
    else:
        folder = Path(folder)
        found = [path.name for path in folder.glob(pattern) if path.is_file()] if folder.is_dir() else []
    return sorted(name for name in found if fnmatch.fnmatchcase(name, pattern))


def read_bytes(path: Location) -> bytes:
    if isinstance(path, RemotePath):
        fs, key = path.filesystem()
        return fs.cat_file(key)
    return Path(path).read_bytes()


def readable(path: Location) -> Path | BinaryIO:
    """What ``pyarrow`` or ``numpy.load`` can read: the local path itself, or the object's bytes in memory."""
    return io.BytesIO(read_bytes(path)) if isinstance(path, RemotePath) else Path(path)


def publish(path: Location, write: Callable[[BinaryIO], None], fsync: bool = False) -> None:
    """Make ``path`` hold what ``write`` writes to a stream, all at once.

    Locally ``write`` fills a hidden temporary file beside ``path`` (flushed to disk with ``fsync``) that is
    renamed over it; on a store it fills memory, sent in one put. On error nothing is published.
    """
    if isinstance(path, RemotePath):
        buffer = io.BytesIO()
        write(buffer)
        fs, key = path.filesystem()
        fs.pipe_file(key, buffer.getvalue())
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as stream:
            write(stream)
            if fsync:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes(path: Location, data: bytes, fsync: bool = False) -> None:
    """Publish ``data`` at ``path`` (see :func:`publish`)."""
    publish(path, lambda stream: stream.write(data), fsync)


def makedirs(path: Location) -> None:
    """Create the local folder ``path`` (a store has no folders: nothing to do)."""
    if not isinstance(path, RemotePath):
        Path(path).mkdir(parents=True, exist_ok=True)


def remove(path: Location) -> None:
    """Delete the file at ``path`` if there is one."""
    if isinstance(path, RemotePath):
        if is_file(path):
            fs, key = path.filesystem()
            fs.rm_file(key)
        return
    Path(path).unlink(missing_ok=True)


def remove_tree(path: Location) -> None:
    """Delete the folder (or prefix) ``path`` and everything under it, if it exists."""
    if isinstance(path, RemotePath):
        if exists(path):
            fs, key = path.filesystem()
            fs.rm(key, recursive=True)
            fs.invalidate_cache(key)
        return
    shutil.rmtree(path, ignore_errors=True)


def remove_matching(out: Location, pattern: str) -> list[str]:
    """Delete the files of ``out`` matching ``pattern`` (``folder/name-glob``, relative to ``out``) and the
    temporary files :func:`publish` left beside them; returns the names removed. Nothing else is touched."""
    folder_name, _, name = pattern.rpartition("/")
    folder = join(out, *folder_name.split("/")) if folder_name else location(out)
    found = names(folder, name) + names(folder, f".{name}.*.tmp")
    for found_name in found:
        remove(folder / found_name)
    if found and not isinstance(folder, RemotePath):
        try:
            Path(folder).rmdir()  # only when nothing else is left in it
        except OSError:
            pass
    return found


def sizes(folder: Location) -> dict[str, int]:
    """Size in bytes of every file right in ``folder``, by name, from one listing (none when it does not exist)."""
    if isinstance(folder, RemotePath):
        fs, key = _refreshed(folder)
        try:
            entries = fs.ls(key, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        return {entry["name"].rstrip("/").rsplit("/", 1)[-1]: int(entry["size"])
                for entry in entries if entry.get("type") == "file"}
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {entry.name: entry.stat().st_size for entry in os.scandir(folder) if entry.is_file()}


def md5(path: Location) -> str:
    """The MD5 hex digest of the file at ``path`` (read in chunks; what the shard index records too)."""
    digest = hashlib.md5()
    if isinstance(path, RemotePath):
        fs, key = path.filesystem()
        with fs.open(key, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    else:
        with open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
