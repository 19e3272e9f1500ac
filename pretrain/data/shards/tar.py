"""The tar header parser: ``(name, offset, size)`` of every member of a tar held in memory or a memory map
(512-byte USTAR headers, PAX and GNU long names; ~1 µs a member), grouped into samples as webdataset does
(key = path up to the first dot of the basename, consecutive members with one key form a sample; a sample's
image is its first member with an image extension)."""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = frozenset(
    "jpg jpeg jpe jfif png apng gif webp tif tiff bmp dib ppm pgm pbm pnm ico jp2 j2k avif heic heif tga".split()
)
"""Member extensions (lower case) taken as a sample's image; any other member (json, txt, cls) is ignored."""

_BLOCK = 512


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

