"""Webdataset shards as training data: which shards a ``--data`` spec names, and random access to a
sample's image bytes by its number.

A spec is one of

- a folder holding a wids ``index.json`` (what ``curate run`` writes to ``OUT/shards/``; ``OUT`` itself
  names the same),
- such an ``index.json`` (``{"__kind__": "wids-shard-index-v1", "shardlist": [{"url", "nsamples",
  "filesize", "md5sum"}, ...]}``; relative urls are taken from the index's folder),
- a brace pattern or a single tar: ``shards/shard-{000000..000041}.tar``, ``a-{0,1}.tar``
  (sample counts then come from reading every tar's headers once),
- a folder of tars without an index (img2dataset's webdataset output, metadata files beside the tars
  allowed; no image file at its top): its tars in name order, counted the same way.

Samples are numbered shard by shard in the index's order. :class:`ShardReader` indexes each tar's
headers on first use (512-byte USTAR headers, PAX and GNU long names; ~1 µs a member, through a
memory map) and reads an image member with one ``pread`` — no copy of the shard, no md5 pass (the
index's ``filesize`` is checked instead). Members group into samples as webdataset does (key = path
up to the first dot of the basename, consecutive members with one key form a sample); a sample's image
is its first member with an image extension::

    shards = resolve_shards("runs/lake/shards")           # or ".../index.json", or a brace pattern
    reader = ShardReader(shards)
    name, data = reader.read(12)     # ("shard-000000.tar/fm_0012-3f2a....png", b"\\x89PNG...")

Each of these may be an fsspec URL (``s3://bucket/run/shards``, ``s3://.../index.json``, a brace pattern
of URLs), reached with ``storage_options``. A remote shard is not memory-mapped: it is fetched whole
once per process when first touched, indexed from memory and kept while reads stay on it; a sample of
a shard let go is one ranged read (see :mod:`pretrain.data.remote`). Local shards keep the mmap + pread
path.

Reading problems of one sample (a truncated tar, a sample without an image) raise
:class:`SampleReadError` so callers skip and count it; problems of the spec itself (no index, a corrupt
index, a listed shard missing or of another size) raise :class:`~pretrain.data.errors.DatasetError`.
"""

from __future__ import annotations

import bisect
import json
import mmap
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import Tensor

from pretrain.data import remote
from pretrain.data.errors import DatasetError

INDEX_NAME = "index.json"
INDEX_KIND = "wids-shard-index-v1"
IMAGE_EXTENSIONS = frozenset(
    "jpg jpeg jpe jfif png apng gif webp tif tiff bmp dib ppm pgm pbm pnm ico jp2 j2k avif heic heif tga".split()
)
"""Member extensions (lower case) taken as a sample's image; any other member (json, txt, cls) is ignored."""

SHARDS_PER_WINDOW = 16
"""Shards whose samples are mixed together in :func:`windowed_order` (all of them when there are fewer)."""

_BLOCK = 512
_NUMERIC_RANGE = re.compile(r"\{(-?\d+)\.\.(-?\d+)\}")
_ALTERNATIVES = re.compile(r"\{([^{}]*,[^{}]*)\}")


class SampleReadError(Exception):
    """One sample whose image bytes cannot be read; ``name`` and ``reason`` say which and why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason

    def __reduce__(self) -> tuple:  # picklable across DataLoader workers
        return (type(self), (self.name, self.reason))


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


# ----------------------------------------------------------------------------------- resolving a spec
def is_shard_spec(spec: str) -> bool:
    """Whether ``--data spec`` names shards (a URL, an index, a tar, a brace pattern of tars, a folder
    with ``index.json``, ``shards/index.json`` or tars only) rather than an image folder or file list."""
    if "://" in spec or spec.endswith((".json", ".tar")) or ("{" in spec and ".tar" in spec):
        return True
    path = Path(spec)
    if not path.is_dir():
        return False
    if (path / INDEX_NAME).is_file() or (path / "shards" / INDEX_NAME).is_file():
        return True
    return bool(_folder_tars(path))


def _folder_tars(path: Path) -> list[Path]:
    """The tars at the top of a folder that holds no image file there (webdataset shards, perhaps with
    other tools' metadata beside them, as img2dataset writes ``00000.parquet`` and ``00000_stats.json``)."""
    from pretrain.data.images import is_image_file

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
    if remote.is_url(spec):
        try:
            return _resolve_remote(spec, storage_options)
        except DatasetError:
            raise
        except Exception as error:  # noqa: BLE001 - the store's errors (no backend, refused, unreachable)
            raise DatasetError(f"{spec}: cannot read ({type(error).__name__}: {_first_line(error)})") from None
    spec = spec.removeprefix("file://")
    path = Path(spec)
    if path.is_dir() and not (path / INDEX_NAME).is_file() and (path / "shards" / INDEX_NAME).is_file():
        path = path / "shards"  # a curate run's output folder
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


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _resolve_remote(spec: str, options: Mapping[str, Any] | None) -> ShardList:
    """:func:`resolve_shards` of a URL: a folder (or run folder) with an index, an index, tars."""
    if spec.endswith(".json"):
        return read_index(spec, options)
    if spec.endswith(".tar") or "{" in spec:
        urls = expand_braces(spec)
        found = remote.sizes(urls, options)
        missing = [url for url in urls if url not in found]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DatasetError(f"{spec}: no such shard {missing[0]}{more}")
        shards = tuple(Shard(url, len(group_samples(read_tar_members(remote.read_bytes(url, options))[0])),
                             found[url]) for url in urls)
        return _checked(ShardList(shards, spec))
    folder = spec.rstrip("/")
    for candidate in (remote.join(folder, INDEX_NAME), remote.join(folder, f"shards/{INDEX_NAME}")):
        if remote.is_file(candidate, options):
            return read_index(candidate, options)
    raise DatasetError(f"{spec}: no {INDEX_NAME} under this prefix (curate run's shard stage writes one "
                       "beside the shards); or give a brace pattern of the tars")


def read_index(path: Path | str, storage_options: Mapping[str, Any] | None = None) -> ShardList:
    """The shards of a wids index file (a path or URL); refuses a missing, empty or corrupt index and
    missing shards."""
    if isinstance(path, str) and remote.is_url(path):
        return _read_index(path, storage_options)
    return _read_index(Path(path), storage_options)


def _read_index(path: Path | str, options: Mapping[str, Any] | None) -> ShardList:
    is_remote = isinstance(path, str)
    try:
        text = remote.read_bytes(path, options) if is_remote else (path.read_bytes() if path.is_file() else None)
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
    found = remote.sizes([s.path for s in result.shards if s.remote], options) if any(
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
    if remote.is_url(url):
        return url
    if isinstance(index, str):  # a remote index: relative urls are keys beside it
        return remote.join(remote.parent(index), url.removeprefix("file://"))
    shard_path = Path(url.removeprefix("file://"))
    return shard_path if shard_path.is_absolute() else index.parent / shard_path


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


# ------------------------------------------------------------------------------------- tar headers
@dataclass(frozen=True)
class TarSample:
    """One sample of a tar: its key, and its image member's name, data offset and size (None: no image)."""

    key: str
    member: str | None
    offset: int
    size: int


def _octal(field: bytes) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    return int(text, 8) if text else 0


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a PAX extended header (``"<len> path=<value>\\n"`` records)."""
    position, found = 0, None
    while position < len(data):
        space = data.find(b" ", position)
        if space < 0:
            break
        length = int(data[position:space])
        if length <= space - position:
            raise ValueError(f"PAX record length {length}")
        record = data[space + 1 : position + length - 1]
        key, _, value = record.partition(b"=")
        if key == b"path":
            found = value.decode("utf-8", "surrogateescape")
        position += length
    return found


def _split_member(name: str) -> tuple[str, str]:
    """webdataset's ``base_plus_ext``: key = folders + basename up to its first dot; ext lower-cased."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower() if dot else ""


def read_tar_members(data: bytes | mmap.mmap) -> tuple[list[tuple[str, int, int]], str | None]:
    """``(name, data offset, size)`` of every regular file in the tar held by ``data`` (a memory map),
    and the reason reading stopped early (``None`` when the tar ended cleanly).

    A header carrying the ``ustar`` magic is trusted as is (its size field is parsed); one without it
    must pass the header checksum, so a misaligned or overwritten header stops the reading there.
    """
    members: list[tuple[str, int, int]] = []
    size = len(data)
    offset, long_name = 0, None
    while offset + _BLOCK <= size:
        header = data[offset : offset + _BLOCK]
        if header[0] == 0 and header.count(0) == _BLOCK:  # end-of-archive blocks
            return members, None
        try:
            if header[257:262] != b"ustar" and _octal(header[148:156]) != sum(header[:148]) + 256 + sum(header[156:]):
                return members, f"bad tar header checksum at byte {offset}"
            length = _octal(header[124:136])
        except ValueError:
            return members, f"corrupt tar header at byte {offset}"
        kind = header[156:157]
        data_offset = offset + _BLOCK
        if data_offset + length > size:
            return members, f"truncated tar: a member at byte {offset} runs past the end of the file"
        if kind in (b"x", b"L"):  # PAX extended header / GNU long name for the next member
            extra = data[data_offset : data_offset + length]
            try:
                long_name = _pax_path(extra) if kind == b"x" else extra.rstrip(b"\0").decode("utf-8", "surrogateescape")
            except ValueError:
                return members, f"corrupt PAX header at byte {offset}"
        elif kind in (b"0", b"\0", b"7"):
            name = long_name
            if name is None:
                name = header[:100].rstrip(b"\0").decode("utf-8", "surrogateescape")
                if header[257:263] == b"ustar\0" and header[345] != 0:  # POSIX prefix field
                    name = header[345:500].rstrip(b"\0").decode("utf-8", "surrogateescape") + "/" + name
            members.append((name, data_offset, length))
            long_name = None
        elif kind != b"g":  # folders, links: not sample files (a global PAX header keeps a pending name)
            long_name = None
        offset = data_offset + (length + _BLOCK - 1) // _BLOCK * _BLOCK
    return members, None if offset >= size else f"truncated tar: {size - offset} stray bytes at the end"


def _map(path: Path) -> mmap.mmap | bytes:
    """A read-only memory map of ``path`` (an empty file gives ``b""``: it cannot be mapped)."""
    with open(path, "rb") as stream:
        if os.fstat(stream.fileno()).st_size == 0:
            return b""
        return mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)


def group_samples(members: list[tuple[str, int, int]]) -> list[TarSample]:
    """Consecutive members with one key form a sample; its image is its first image-extension member."""
    samples: list[TarSample] = []
    current_key, image = None, None
    for name, offset, length in members:
        key, ext = _split_member(name)
        if key != current_key:
            if current_key is not None:
                samples.append(image or TarSample(current_key, None, 0, 0))
            current_key, image = key, None
        if image is None and ext in IMAGE_EXTENSIONS:
            image = TarSample(key, name, offset, length)
    if current_key is not None:
        samples.append(image or TarSample(current_key, None, 0, 0))
    return samples


def index_tar(path: Path) -> tuple[list[TarSample], str | None]:
    """The samples of the tar at ``path`` and why reading its headers stopped early (``None``: it did
    not); the samples before any damage are whole."""
    data = _map(path)
    try:
        members, problem = read_tar_members(data)
    finally:
        if isinstance(data, mmap.mmap):
            data.close()
    return group_samples(members), problem


# ------------------------------------------------------------------------------------ random access
class ShardReader:
    """Image bytes of sample ``i`` of a :class:`ShardList`, by offset (picklable: each process opens
    and indexes the shards it touches, keeping the ``open_shards`` most recent ones open).

    Headers are indexed through a memory map that is closed straight after; sample bytes are read with
    ``os.pread``, so an I/O error or a file cut short under a running job is a skipped sample, not a
    SIGBUS. A remote shard (reached with ``storage_options``) is fetched whole when first touched and
    indexed from memory; its bytes stay while reads stay on it, and a later read of it once they are let
    go is one ranged read (:mod:`pretrain.data.remote`).
    """

    def __init__(self, shards: ShardList, open_shards: int = 32,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        self.shards = shards
        self.open_shards = open_shards
        self.storage_options = dict(storage_options or {})
        self._open: OrderedDict[int, tuple[int | None, list[TarSample], str | None]] = OrderedDict()
        self._held: tuple[int, bytes] | None = None  # the remote shard whose bytes are in memory

    def __len__(self) -> int:
        return self.shards.num_samples

    def __getstate__(self) -> dict:
        return {"shards": self.shards, "open_shards": self.open_shards, "storage_options": self.storage_options}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["shards"], state["open_shards"], state.get("storage_options"))

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        for fd, _, _ in getattr(self, "_open", {}).values():
            if fd is not None:
                os.close(fd)
        self._open = OrderedDict()

    def _shard(self, number: int) -> tuple[int | None, list[TarSample], str | None]:
        if number in self._open:
            self._open.move_to_end(number)
            return self._open[number]
        path = self.shards.shards[number].path
        try:
            if isinstance(path, str):
                fd, (samples, problem) = None, self._fetch(number, path)
            else:
                fd = os.open(path, os.O_RDONLY)
                samples, problem = index_tar(path)
        except Exception as error:  # noqa: BLE001 - OSError, ValueError, or the store's own errors
            entry: tuple[int | None, list[TarSample], str | None] = (
                None, [], f"unreadable shard ({getattr(error, 'strerror', None) or error})")
        else:
            entry = (fd, samples, problem)  # members before any damage are whole
        self._open[number] = entry
        while len(self._open) > self.open_shards:
            old_fd = self._open.popitem(last=False)[1][0]
            if old_fd is not None:
                os.close(old_fd)
        return entry

    def _fetch(self, number: int, url: str) -> tuple[list[TarSample], str | None]:
        """Fetch remote shard ``number`` whole, hold its bytes and index them."""
        self._held = None
        data = remote.read_bytes(url, self.storage_options)
        self._held = (number, data)
        members, problem = read_tar_members(data)
        return group_samples(members), problem

    def _remote_bytes(self, number: int, sample: TarSample) -> bytes:
        if self._held is not None and self._held[0] == number:
            return self._held[1][sample.offset : sample.offset + sample.size]
        url = self.shards.shards[number].path
        return remote.read_bytes(str(url), self.storage_options, sample.offset, sample.offset + sample.size)

    def read(self, index: int) -> tuple[str, bytes]:
        """``(name, image bytes)`` of sample ``index``; :class:`SampleReadError` when they cannot be read."""
        number, position = self.shards.locate(index)
        fd, samples, problem = self._shard(number)
        shard = self.shards.shards[number]
        if position >= len(samples):
            reason = problem or f"the shard holds {len(samples)} samples, its index says {shard.nsamples}"
            raise SampleReadError(f"{shard.name}#{position}", reason)
        sample = samples[position]
        if sample.member is None:
            raise SampleReadError(f"{shard.name}/{sample.key}", "sample has no image member")
        name = f"{shard.name}/{sample.member}"
        try:
            if shard.remote:
                data = self._remote_bytes(number, sample)
            else:
                data = os.pread(fd, sample.size, sample.offset)  # type: ignore[arg-type]
        except OSError as error:
            raise SampleReadError(name, f"unreadable ({error.strerror or error})") from None
        except Exception as error:  # noqa: BLE001 - a store's own errors (refused, throttled)
            raise SampleReadError(name, f"unreadable ({type(error).__name__}: {_first_line(error)})") from None
        if len(data) != sample.size:
            raise SampleReadError(name, f"short read ({len(data)} of {sample.size} bytes)")
        return name, data


# ------------------------------------------------------------------------------------------- order
def windowed_order(counts: list[int], seed: int, epoch: int, shards_per_window: int = SHARDS_PER_WINDOW) -> Tensor:
    """A permutation of all ``sum(counts)`` samples fixed by ``(seed, epoch)``, with locality.

    The shards are shuffled and cut into windows of ``shards_per_window``; each window's samples are
    shuffled together and the windows follow one another. Consecutive batches (and so every rank and
    DataLoader worker at one time) read from at most two windows' shards. With no more shards than one
    window it is exactly ``torch.randperm(n)`` of the same generator — the order of the in-memory and
    folder sources.
    """
    if shards_per_window < 1:
        raise ValueError(f"shards_per_window must be positive, got {shards_per_window}")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    total = sum(counts)
    if len(counts) <= shards_per_window:
        return torch.randperm(total, generator=generator)
    starts = [0, *accumulate(counts)][:-1]
    shard_order = torch.randperm(len(counts), generator=generator).tolist()
    pieces = []
    for first in range(0, len(shard_order), shards_per_window):
        window = shard_order[first : first + shards_per_window]
        members = torch.cat([torch.arange(starts[s], starts[s] + counts[s]) for s in window])
        pieces.append(members[torch.randperm(len(members), generator=generator)])
    return torch.cat(pieces)
