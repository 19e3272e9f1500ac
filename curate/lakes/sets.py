"""The input sets: naming them, the stable key of each file, the local listing and the ``files`` table that partitions them.

A set is a local folder (searched recursively) or a glob pattern. Keys follow webdataset's rule (no dots;
here only ``[A-Za-z0-9_-]``): the file's stem, cleaned and cut to 48 characters, then 12 hex digits of the
SHA-1 of its URI, so two files never share a key and a rerun gives the same keys::

    make_key("/lake/cats/IMG.0001.JPG")   # 'IMG_0001-3f2a...'
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow as pa

from dinolab.curate.lakes.uris import SKIP, SKIPPED, TAR, LakeError, is_url, parse, skipped, source_name
from dinolab.pretrain.data.images import IMAGE_SUFFIXES, is_image_file
from dinolab.schemas.tables import FILES, ROLES

__all__ = ["ImageSet", "LakeError", "files_table", "list_set", "make_key", "name_sets", "resolve_location"]


@dataclass(frozen=True)
class ImageSet:
    """One input set: where it is, what it is for (a role of :data:`~schemas.tables.ROLES`) and its name."""

    uri: str
    role: str
    name: str


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


_CURATED_KEY = re.compile(r"[A-Za-z0-9_-]{1,48}-[0-9a-f]{12}")


def make_key(uri: str, prefix: str = "") -> str:
    """Stable, dot-free sample key of ``uri`` (``prefix`` names non-pool sets so their keys never meet the pool's).

    The stem is that of the file, of the tar member, or ``TABLE_ROW`` for a parquet row (:func:`source_name`).
    A tar member named by a key of this form already (a sample of a curated shard, ``IMG_0001-0ad2bd17b2bc.jpg``)
    keeps that key, so curating shards again does not add a hash per round.
    """
    name = source_name(uri)
    if uri.startswith(TAR):
        key = PurePosixPath(name).name.partition(".")[0]
        if _CURATED_KEY.fullmatch(key):
            return f"{prefix}-{key}" if prefix else key
    stem = _UNSAFE.sub("_", Path(name).stem).strip("_")[:48] or "image"
    digest = hashlib.sha1(uri.encode()).hexdigest()[:12]
    return f"{prefix}-{stem}-{digest}" if prefix else f"{stem}-{digest}"


def list_set(uri: str, follow_links: bool = False) -> list[str]:
    """Sorted absolute paths of the image files of a folder (recursive) or a glob pattern.

    Entries with an image suffix that are not read are listed as ``skip://`` uris (:func:`skipped`), so
    ingest names and counts them: symbolic links (unless ``follow_links``; then a link to a folder listed
    already is a loop), FIFOs and other special files, hidden files, names that are not UTF-8. Hidden
    folders are not searched.
    """
    path = Path(uri).expanduser()
    if path.is_dir():
        found = _walk(str(path.resolve()), follow_links)
    elif any(char in uri for char in "*?["):
        base = _fixed_prefix(str(path))
        found = [_entry(os.path.abspath(p), follow_links, base) for p in glob.glob(str(path), recursive=True)
                 if is_image_file(p) and not os.path.isdir(p)]
    elif path.is_file():
        raise LakeError(f"{uri}: a file, not a folder or glob pattern of images")
    else:
        raise LakeError(f"{uri}: no such folder")
    if all(entry.startswith(SKIP) for entry in found):
        reasons = Counter(parse(entry).reason for entry in found)
        detail = "; ".join(f"{count} skipped: {SKIPPED[reason]}" for reason, count in sorted(reasons.items()))
        raise LakeError(f"{uri}: no image files found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
                        + (f" ({detail})" if detail else ""))
    return sorted(found)


def _walk(root: str, follow_links: bool) -> list[str]:
    """The entries under folder ``root``, depth first; each folder (by device and inode) searched once."""
    found, stack, seen = [], [root], {_identity(root)}
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # an unreadable folder is left out, as a glob leaves it out
        for entry in entries:
            if entry.name.startswith(".") and _is_dir(entry):
                continue
            if _is_dir(entry):
                if entry.is_symlink() and not follow_links:
                    found.append(skipped("link", entry.path))
                elif not _valid_name(entry.name):
                    found.append(skipped("name", entry.path))
                elif _identity(entry.path) in seen:
                    found.append(skipped("loop", entry.path))
                else:
                    seen.add(_identity(entry.path))
                    stack.append(entry.path)
            elif is_image_file(entry.name):
                plain = entry.is_file(follow_symlinks=False) and not entry.name.startswith(".")
                found.append(entry.path if plain and _valid_name(entry.path) else _entry(entry.path, follow_links))
    return found


def _entry(path: str, follow_links: bool, base: str = "") -> str:
    """The uri of the image-named entry ``path``: the path itself, or a ``skip://`` uri saying why not
    (``base``: for a glob match, the folder under which a linked folder is a link too)."""
    if not _valid_name(path):
        return skipped("name", path)
    if os.path.basename(path).startswith("."):
        return skipped("hidden", path)
    if not follow_links and (os.path.islink(path) or _linked_below(path, base)):
        return skipped("link", path)
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return path  # a broken link or a loop of links: ingest reports it unreadable
    return path if regular else skipped("special", path)


def _linked_below(path: str, base: str) -> bool:
    """Whether a folder between ``base`` and ``path`` is a symbolic link."""
    if not base:
        return False
    parent, base = os.path.dirname(path), os.path.abspath(base)
    while parent.startswith(base + os.sep):
        if os.path.islink(parent):
            return True
        parent = os.path.dirname(parent)
    return False


def _fixed_prefix(pattern: str) -> str:
    """The folder of a glob pattern before its first wildcard (``/data/**/*.jpg`` -> ``/data``)."""
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if any(char in part for char in "*?[")), len(parts))
    return str(Path(*parts[:fixed])) if fixed else "."


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # a link to a folder counts as a folder
    except OSError:
        return False


def _identity(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _valid_name(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def resolve_location(uri: str) -> str:
    """Where ``uri`` is, independent of the current folder: a URL as given, a local path made absolute."""
    return uri if is_url(uri) else str(Path(uri).expanduser().resolve())


def name_sets(uris: list[str], role: str, taken: set[str]) -> list[ImageSet]:
    """An :class:`ImageSet` per URI of one role, at its resolved location (:func:`resolve_location`), named
    after the folder (made unique against ``taken``)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    sets = []
    for uri in map(resolve_location, uris):
        base = _UNSAFE.sub("_", Path(uri.rstrip("/")).name.split("*")[0]).strip("_") or role
        name, suffix = base, 2
        while name in taken:
            name, suffix = f"{base}_{suffix}", suffix + 1
        taken.add(name)
        sets.append(ImageSet(uri, role, name))
    return sets


def files_table(sets: list[ImageSet], partition_size: int, follow_links: bool = False) -> pa.Table:
    """The listing of all sets: each set's files in sorted order, cut into partitions numbered across sets."""
    if partition_size < 1:
        raise ValueError("partition_size must be at least 1")
    columns: dict[str, list] = {name: [] for name in FILES.schema.names}
    partition = 0
    for image_set in sets:
        uris = list_set(image_set.uri, follow_links)
        prefix = "" if image_set.role == "pool" else image_set.name
        for start in range(0, len(uris), partition_size):
            for uri in uris[start : start + partition_size]:
                columns["key"].append(make_key(uri, prefix))
                columns["uri"].append(uri)
                columns["role"].append(image_set.role)
                columns["set"].append(image_set.name)
                columns["partition"].append(partition)
            partition += 1
    table = pa.table(columns, schema=FILES.schema)
    keys = table.column("key").to_pylist()
    if len(set(keys)) != len(keys):
        raise LakeError("two files of the same set share a URI")
    return table
