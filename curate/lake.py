"""Image lakes: listing a set's files, the stable key of each, and the listing table that partitions them.

A set is a local folder (searched recursively) or a glob pattern. Keys follow webdataset's rule (no dots;
here only ``[A-Za-z0-9_-]``): the file's stem, cleaned and cut to 48 characters, then 12 hex digits of the
SHA-1 of its URI, so two files never share a key and a rerun gives the same keys::

    make_key("/lake/cats/IMG.0001.JPG")   # 'IMG_0001-3f2a...'
"""

from __future__ import annotations

import glob
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from curate.lakes.uris import LakeError, is_url, source_name
from pretrain.data.images import IMAGE_SUFFIXES, is_image_file
from schemas.tables import FILES, ROLES

__all__ = ["ImageSet", "LakeError", "files_table", "list_set", "make_key", "name_sets", "resolve_location"]


@dataclass(frozen=True)
class ImageSet:
    """One input set: where it is, what it is for (a role of :data:`~schemas.tables.ROLES`) and its name."""

    uri: str
    role: str
    name: str


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def make_key(uri: str, prefix: str = "") -> str:
    """Stable, dot-free sample key of ``uri`` (``prefix`` names non-pool sets so their keys never meet the pool's).

    The stem is that of the file, of the tar member, or ``TABLE_ROW`` for a parquet row (:func:`source_name`).
    """
    stem = _UNSAFE.sub("_", Path(source_name(uri)).stem).strip("_")[:48] or "image"
    digest = hashlib.sha1(uri.encode()).hexdigest()[:12]
    return f"{prefix}-{stem}-{digest}" if prefix else f"{stem}-{digest}"


def list_set(uri: str) -> list[str]:
    """Sorted absolute paths of the image files of a folder (recursive) or a glob pattern."""
    path = Path(uri).expanduser()
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.is_file() and is_image_file(p) and not _hidden(p, path)]
    elif any(char in uri for char in "*?["):
        found = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file() and is_image_file(p)]
    elif path.is_file():
        raise LakeError(f"{uri}: a file, not a folder or glob pattern of images")
    else:
        raise LakeError(f"{uri}: no such folder")
    if not found:
        raise LakeError(f"{uri}: no image files found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return sorted(str(p.resolve()) for p in found)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


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


def files_table(sets: list[ImageSet], partition_size: int) -> pa.Table:
    """The listing of all sets: each set's files in sorted order, cut into partitions numbered across sets."""
    if partition_size < 1:
        raise ValueError("partition_size must be at least 1")
    columns: dict[str, list] = {name: [] for name in FILES.schema.names}
    partition = 0
    for image_set in sets:
        uris = list_set(image_set.uri)
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
