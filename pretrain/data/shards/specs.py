"""Which shards a ``--data`` spec names: an index (local or behind a URL), a brace pattern, a folder of
tars; as a :class:`ShardList` whose sample ``i`` is found by :meth:`ShardList.locate` (the forms a spec
takes are listed in :mod:`pretrain.data.shards`). Problems of the spec itself (no index, a corrupt index,
a listed shard missing or of another size) raise :class:`~pretrain.data.errors.DatasetError`."""

from __future__ import annotations

import bisect
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path, PurePosixPath
from typing import Any

from dinolab.core import storage
from dinolab.core.storage import INDEX_KIND, INDEX_NAME, SHARD_DIR, RemotePath
from dinolab.pretrain.data.errors import DatasetError
from dinolab.pretrain.data.shards.tar import group_samples, index_tar, read_tar_members

_NUMERIC_RANGE = re.compile(r"\{(-?\d+)\.\.(-?\d+)\}")
_ALTERNATIVES = re.compile(r"\{([^{}]*,[^{}]*)\}")


@dataclass(frozen=True)
class Shard:
    """One tar: its path (a URL string for a remote shard), sample count and (from an index) expected size."""

    path: Path | str
    nsamples: int
    filesize: int | None = None

    @property
    def name(self) -> str:
        return PurePosixPath(str(self.path)).name

    @property
    def remote(self) -> bool:
        return isinstance(self.path, str)


@dataclass(frozen=True)
class ShardList:
    """The shards of a spec, in order; sample ``i`` is found by :meth:`locate`."""

    shards: tuple[Shard, ...]
    source: str

    @property
    def counts(self) -> list[int]:
        return [shard.nsamples for shard in self.shards]

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    def locate(self, index: int) -> tuple[int, int]:
        """``(shard number, position in that shard)`` of sample ``index``."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} of {self.num_samples}")
        ends = self._ends
        number = bisect.bisect_right(ends, index)
        return number, index - (ends[number - 1] if number else 0)

    @property
    def _ends(self) -> list[int]:
        ends = self.__dict__.get("_cached_ends")
        if ends is None:
            ends = list(accumulate(self.counts))
            object.__setattr__(self, "_cached_ends", ends)
        return ends



def is_shard_spec(spec: str) -> bool:
    """Whether ``--data spec`` names shards (a URL, an index, a tar, a brace pattern of tars, a folder
    with ``index.json``, ``shards/index.json`` or tars only) rather than an image folder or file list."""
    if storage.is_url(spec) or spec.endswith((".json", ".tar")) or ("{" in spec and ".tar" in spec):
        return True
    path = Path(spec)
    if not path.is_dir():
        return False
    if (path / INDEX_NAME).is_file() or (path / SHARD_DIR / INDEX_NAME).is_file():
        return True
    return bool(_folder_tars(path))


def _folder_tars(path: Path) -> list[Path]:
    """The tars at the top of a folder that holds no image file there (webdataset shards, perhaps with
    other tools' metadata beside them, as img2dataset writes ``00000.parquet`` and ``00000_stats.json``)."""
    from dinolab.pretrain.data.images import is_image_file

    tars = []
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            if is_image_file(entry.name):
                return []  # a folder of images (the scan stops at the first one)
            if entry.name.endswith(".tar"):
                tars.append(Path(entry.path))
    return sorted(tars)


def resolve_shards(spec: str, storage_options: Mapping[str, Any] | None = None) -> ShardList:
    """The shards named by ``spec`` (see the module docstring); :class:`DatasetError` when unusable."""
    if storage.is_remote(spec):
        try:
            return _resolve_remote(spec, storage_options)
        except DatasetError:
            raise
        except Exception as error:  # noqa: BLE001 - the store's errors (no backend, refused, unreachable)
            raise DatasetError(f"{spec}: cannot read ({type(error).__name__}: {first_line(error)})") from None
    spec = storage.strip_local_scheme(spec)
    path = Path(spec)
    if path.is_dir() and not (path / INDEX_NAME).is_file() and (path / SHARD_DIR / INDEX_NAME).is_file():
        path = path / SHARD_DIR  # a curate run's output folder
    if path.is_dir():
        if (path / INDEX_NAME).is_file():
            return read_index(path / INDEX_NAME, storage_options)
        paths = _folder_tars(path)
        if not paths:
            raise DatasetError(f"{spec}: no {INDEX_NAME} and no tar shards in this folder (curate run's shard "
                               "stage writes both)")
        return _tar_list(paths, spec)
    if spec.endswith(".json"):
        return read_index(path, storage_options)
    return _tar_list([Path(name) for name in expand_braces(spec)], spec)


def _tar_list(paths: list[Path], spec: str) -> ShardList:
    """Shards read without an index: each tar's samples counted from its headers."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(f"{spec}: no such shard {missing[0]}{more}")
    shards = tuple(Shard(p, len(index_tar(p)[0]), p.stat().st_size) for p in paths)  # a damaged tar: its whole samples
    return _checked(ShardList(shards, spec))


def first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _resolve_remote(spec: str, options: Mapping[str, Any] | None) -> ShardList:
    """:func:`resolve_shards` of a URL: a folder (or run folder) with an index, an index, tars."""
    if spec.endswith(".json"):
        return read_index(spec, options)
    if spec.endswith(".tar") or "{" in spec:
        urls = expand_braces(spec)
        found = _remote_sizes(urls, options)
        missing = [url for url in urls if url not in found]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DatasetError(f"{spec}: no such shard {missing[0]}{more}")
        shards = tuple(Shard(url, len(group_samples(read_tar_members(storage.read_bytes(RemotePath(url, options)))[0])),
                             found[url]) for url in urls)
        return _checked(ShardList(shards, spec))
    folder = spec.rstrip("/")
    for candidate in (RemotePath(folder, options) / INDEX_NAME, RemotePath(folder, options) / SHARD_DIR / INDEX_NAME):
        if storage.is_file(candidate):
            return read_index(candidate.url, options)
    raise DatasetError(f"{spec}: no {INDEX_NAME} under this prefix (curate run's shard stage writes one "
                       "beside the shards); or give a brace pattern of the tars")


def read_index(path: Path | str, storage_options: Mapping[str, Any] | None = None) -> ShardList:
    """The shards of a wids index file (a path or URL); refuses a missing, empty or corrupt index and
    missing shards."""
    if isinstance(path, str) and storage.is_remote(path):
        return _read_index(path, storage_options)
    return _read_index(Path(path), storage_options)


def _read_index(path: Path | str, options: Mapping[str, Any] | None) -> ShardList:
    is_remote = isinstance(path, str)
    try:
        text = storage.read_bytes(RemotePath(path, options)) if is_remote else (path.read_bytes() if path.is_file() else None)
    except FileNotFoundError:
        text = None
    if text is None:
        raise DatasetError(f"{path}: no such shard index")
    try:
        index = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DatasetError(f"{path}: corrupt shard index, not JSON ({first})") from None
    if not isinstance(index, dict) or not isinstance(index.get("shardlist"), list):
        raise DatasetError(f"{path}: not a wids shard index (no 'shardlist' list; expected __kind__ {INDEX_KIND})")
    kind = index.get("__kind__", INDEX_KIND)
    if kind != INDEX_KIND:
        raise DatasetError(f"{path}: shard index of kind {kind!r}, expected {INDEX_KIND!r}")
    if not index["shardlist"]:
        raise DatasetError(f"{path}: the shard index lists no shards")
    shards = []
    for number, entry in enumerate(index["shardlist"]):
        url = entry.get("url") if isinstance(entry, dict) else None
        nsamples = entry.get("nsamples") if isinstance(entry, dict) else None
        filesize = entry.get("filesize") if isinstance(entry, dict) else None
        if not isinstance(url, str) or not url or type(nsamples) is not int or nsamples < 0:
            raise DatasetError(f"{path}: corrupt shard index, entry {number} needs a 'url' and an "
                               "'nsamples' count >= 0")
        if filesize is not None and (type(filesize) is not int or filesize < 0):
            raise DatasetError(f"{path}: corrupt shard index, entry {number} has filesize {filesize!r}")
        shards.append(Shard(_shard_location(path, url), nsamples, filesize))
    result = ShardList(tuple(shards), str(path))
    found = _remote_sizes([s.path for s in result.shards if s.remote], options) if any(
        s.remote for s in result.shards) else {}
    for shard in result.shards:
        size = found.get(shard.path) if shard.remote else (shard.path.stat().st_size if shard.path.is_file() else None)
        if size is None:
            raise DatasetError(f"{path}: lists {shard.name}, which does not exist ({shard.path})")
        if shard.filesize is not None and size != shard.filesize:
            raise DatasetError(f"{path}: {shard.name} holds {size} bytes but the index says "
                               f"{shard.filesize}: the shard changed after the index was written")
    return _checked(result)


def _shard_location(index: Path | str, url: str) -> Path | str:
    """Where an index entry's shard is: its URL, or a path taken from the index's folder when relative."""
    if storage.is_remote(url):
        return url
    relative = storage.strip_local_scheme(url)
    if isinstance(index, str):  # a remote index: relative urls are keys beside it
        return (RemotePath(index).parent / relative).url
    shard_path = Path(relative)
    return shard_path if shard_path.is_absolute() else index.parent / shard_path


def _remote_sizes(urls: list[str], options: Mapping[str, Any] | None) -> dict[str, int]:
    """Sizes of those of ``urls`` that exist, from one listing per folder."""
    found: dict[str, int] = {}
    for folder in dict.fromkeys(RemotePath(url).parent.url for url in urls):
        listed = storage.sizes(RemotePath(folder, options))
        for url in urls:
            shard = RemotePath(url)
            if shard.parent.url == folder and shard.name in listed:
                found[url] = listed[shard.name]
    return found


def _checked(shards: ShardList) -> ShardList:
    if shards.num_samples == 0:
        raise DatasetError(f"{shards.source}: the shards hold no samples")
    return shards


def expand_braces(pattern: str) -> list[str]:
    """Brace expansion as webdataset does it: ``{000..012}`` (zero-padded to the width of the first
    bound), ``{a,b}``; several braces give their product, left to right."""
    match = _NUMERIC_RANGE.search(pattern)
    alternatives = _ALTERNATIVES.search(pattern)
    if match and (alternatives is None or match.start() < alternatives.start()):
        low, high = int(match.group(1)), int(match.group(2))
        width = len(match.group(1).lstrip("-"))
        step = 1 if high >= low else -1
        values = [f"{value:0{width}d}" for value in range(low, high + step, step)]
    elif alternatives:
        match, values = alternatives, alternatives.group(1).split(",")
    else:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end():]
    return [name for value in values for name in expand_braces(head + value + tail)]

