"""Storage: local folders and fsspec URLs (``s3://bucket/prefix``) behind one set of calls, for every package.

What a location is (:func:`is_url`, :func:`is_remote`, :func:`protocol`), the filesystem that reaches it
(:func:`filesystem`, with the storage options of :func:`parse_storage_options`), and files read, listed,
written atomically and removed there. A :class:`RemotePath` is a file or folder of a store together with
its storage options (as datatrove's ``DataFolder``), so whoever holds it can reach it.

**URLs.** A string with a scheme (``s3://``, ``memory://``, ``tar://``, ``file://``) is a URL
(:func:`is_url`); ``file://`` and ``local://`` URLs name local files, every other scheme a store
(:func:`is_remote`). Outputs and shards given as ``file:///abs/path`` are written and read as that local
path; storage options go to every protocol but ``file``.

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
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

SHARD_DIR = "shards"
"""The folder of a curation output that holds its webdataset shards and their index."""
INDEX_NAME = "index.json"
"""The shard index file of :data:`SHARD_DIR`."""
INDEX_KIND = "wids-shard-index-v1"
"""The ``__kind__`` of a shard index (wids' format: ``shardlist`` of ``url``, ``nsamples``, ``filesize``, ``md5sum``)."""
STORAGE_OPTIONS_ENV = "PRETRAIN_STORAGE_OPTIONS"
"""Environment variable holding storage options as a JSON object (how ``curate run --pretrain`` passes
secrets to ``pretrain`` without a command line); ``--storage-option`` pairs are laid over it."""
BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp",
            "az": "adlfs", "abfs": "adlfs"}
"""The package that gives fsspec each protocol (named in the error when it is missing)."""
LOCAL_PROTOCOLS = ("file", "local")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class StorageError(OSError):
    """A location no filesystem here can reach (an unknown protocol, a backend that is not installed)."""


class StorageOptionError(ValueError):
    """A ``--storage-option`` that is not ``KEY=VALUE`` (or storage options in the environment that are not JSON)."""


def is_url(text: str | os.PathLike) -> bool:
    """Whether ``text`` is a string starting with a scheme (``s3://``, ``tar://``, and ``file://`` too)."""
    return isinstance(text, str) and bool(_SCHEME.match(text))


def protocol(url: str | os.PathLike) -> str:
    """The scheme of ``url`` (``s3``, ``gs``, ``https``...), ``file`` for a local path."""
    return url.split("://", 1)[0].lower() if is_url(url) else "file"  # type: ignore[union-attr]


def is_remote(text: str | os.PathLike) -> bool:
    """Whether ``text`` names a store: a URL whose scheme is not ``file://`` (nor ``local://``)."""
    return is_url(text) and protocol(text) not in LOCAL_PROTOCOLS


def options_for(url_protocol: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options a filesystem of ``url_protocol`` gets (none for local files)."""
    return {} if url_protocol in LOCAL_PROTOCOLS else dict(storage_options or {})


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None):
    """The fsspec filesystem of ``url``; :class:`StorageError` naming the package when its backend is missing."""
    import fsspec

    name = protocol(url)
    try:
        return fsspec.filesystem(name, **options_for(name, storage_options))
    except ImportError as error:
        package = BACKENDS.get(name, f"the {name}:// fsspec backend")
        raise StorageError(f"{url}: fsspec has no {name}:// backend here ({error}); pip install {package}") from None
    except ValueError as error:
        raise StorageError(f"{url}: no fsspec filesystem for {name}:// ({error})") from None


def parse_storage_options(pairs: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Storage options of ``environ[STORAGE_OPTIONS_ENV]`` (JSON, when ``environ`` is given) with ``KEY=VALUE``
    pairs laid over them: ``true``/``false`` become booleans, every other value stays a string (a
    numeric-looking token is still a token); ``a.b=v`` nests (``client_kwargs.region_name=eu-west-1``)::

        parse_storage_options(["endpoint_url=http://127.0.0.1:9000", "anon=false"])
    """
    options: dict[str, Any] = {}
    text = (environ or {}).get(STORAGE_OPTIONS_ENV)
    if text:
        try:
            options = json.loads(text)
        except json.JSONDecodeError:
            raise StorageOptionError(f"{STORAGE_OPTIONS_ENV} is not a JSON object") from None
        if not isinstance(options, dict):
            raise StorageOptionError(f"{STORAGE_OPTIONS_ENV} is not a JSON object")
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:  # the value is not echoed: it may be a credential typed without its key
            raise StorageOptionError("--storage-option: expected KEY=VALUE (one was given without '=' or a key)")
        *parents, leaf = name.split(".")
        target = options
        for parent in parents:
            nested = target.setdefault(parent, {})
            if not isinstance(nested, dict):
                raise StorageOptionError(f"--storage-option {name}: {parent} is already set to a value")
            target = nested
        target[leaf] = {"true": True, "false": False}.get(value.strip().lower(), value)
    return options


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


def location(out: str | os.PathLike | RemotePath, storage_options: Mapping[str, Any] | None = None) -> Location:
    """``out`` as a :data:`Location`: a :class:`RemotePath` for a URL (with ``storage_options``), else a Path."""
    if isinstance(out, RemotePath):
        return out
    if is_remote(out):
        return RemotePath(str(out), dict(storage_options or {}))
    return Path(strip_local_scheme(str(out)))


def strip_local_scheme(text: str) -> str:
    """``text`` without a leading ``file://`` (or ``local://``)."""
    for scheme in LOCAL_PROTOCOLS:
        if text.startswith(f"{scheme}://"):
            return text[len(scheme) + 3:]
    return text


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


def read_bytes(path: Location, start: int | None = None, end: int | None = None) -> bytes:
    """The bytes of the file at ``path`` (``[start, end)`` when given: one ranged read on a store);
    ``FileNotFoundError`` when there is none."""
    if isinstance(path, RemotePath):
        fs, key = _refreshed(path)  # written by another process (a worker) since this one listed its folder
        return fs.cat_file(key, start=start, end=end)
    if start is None and end is None:
        return Path(path).read_bytes()
    with open(path, "rb") as stream:
        stream.seek(start or 0)
        return stream.read(-1 if end is None else end - (start or 0))


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


def remove_empty_folders(folder: Location, levels: int = 2) -> None:
    """Remove ``folder`` and then up to ``levels - 1`` of its parents, each only while it is empty (local
    folders; an object store has no folders to remove)."""
    if isinstance(folder, RemotePath):
        return
    for empty in [Path(folder), *Path(folder).parents][:levels]:
        try:
            empty.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            break


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
