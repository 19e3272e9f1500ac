"""Tables on disk: ``OUT/tables/<name>/part-NNNNN.parquet``, written atomically, validated on read.

A part is written to a temporary name in the same folder and renamed into place, so a part that exists
is complete: resuming a stage is listing which parts exist. Vectors that belong to a part (the embed
stage's float32 matrix) sit beside it as ``part-NNNNN.npy`` and are written before the parquet part.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.tables import TABLES, SchemaError, validate


def table_dir(out: str | Path, name: str) -> Path:
    return Path(out) / "tables" / name


def part_path(out: str | Path, name: str, partition: int, suffix: str = ".parquet") -> Path:
    return table_dir(out, name) / f"part-{partition:05d}{suffix}"


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def write_part(out: str | Path, name: str, partition: int, table: pa.Table) -> Path:
    """Validate ``table`` against its schema and publish it as part ``partition`` of table ``name``."""
    table = validate(table.cast(TABLES[name].schema), name)
    path = part_path(out, name, partition)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary(path)
    try:
        pq.write_table(table, temporary, compression="zstd")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_array(out: str | Path, name: str, partition: int, array: np.ndarray) -> Path:
    """Publish the ``.npy`` matrix that belongs to part ``partition`` (write it before the parquet part)."""
    path = part_path(out, name, partition, ".npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary(path)
    try:
        with open(temporary, "wb") as stream:
            np.save(stream, np.ascontiguousarray(array, dtype=np.float32))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_array(out: str | Path, name: str, partition: int, mmap: bool = True) -> np.ndarray:
    return np.load(part_path(out, name, partition, ".npy"), mmap_mode="r" if mmap else None)


def done_parts(out: str | Path, name: str) -> set[int]:
    """Partitions whose part of table ``name`` has been published."""
    directory = table_dir(out, name)
    if not directory.is_dir():
        return set()
    return {int(path.stem.split("-")[1]) for path in directory.glob("part-*.parquet")}


def read_part(out: str | Path, name: str, partition: int) -> pa.Table:
    path = part_path(out, name, partition)
    return validate(_read(path), name, str(path))


def read_table(out: str | Path, name: str) -> pa.Table:
    """All parts of table ``name``, in partition order, validated; :class:`SchemaError` when there are none."""
    directory = table_dir(out, name)
    paths = sorted(directory.glob("part-*.parquet")) if directory.is_dir() else []
    if not paths:
        raise SchemaError(f"{directory}: no '{name}' table yet; run the stage that writes it")
    parts = [validate(_read(path), name, str(path)) for path in paths]
    return pa.concat_tables(parts)


def _read(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise SchemaError(f"{path}: not a readable parquet file ({error})") from None
