"""Tables on disk: ``OUT/tables/<name>/part-NNNNN.parquet``, written atomically, validated on read.

A part is written to a temporary name in the same folder and renamed into place (on an object store:
sent in one put, see :mod:`curate.output`), so a part that exists is complete: resuming a stage is
listing which parts exist. Vectors that belong to a part (the embed stage's float32 matrix) sit beside
it as ``part-NNNNN.npy`` and are written before the parquet part.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate import output
from curate.output import Location, RemotePath
from schemas.tables import TABLES, SchemaError, validate


def table_dir(out: str | Path | RemotePath, name: str) -> Location:
    return output.join(out, "tables", name)


def part_path(out: str | Path | RemotePath, name: str, partition: int, suffix: str = ".parquet") -> Location:
    return table_dir(out, name) / f"part-{partition:05d}{suffix}"


def write_part(out: str | Path | RemotePath, name: str, partition: int, table: pa.Table) -> Location:
    """Validate ``table`` against its schema and publish it as part ``partition`` of table ``name``."""
    table = validate(table.cast(TABLES[name].schema), name)
    path = part_path(out, name, partition)
    output.publish(path, lambda stream: pq.write_table(table, stream, compression="zstd"))
    return path


def write_array(out: str | Path | RemotePath, name: str, partition: int, array: np.ndarray) -> Location:
    """Publish the ``.npy`` matrix that belongs to part ``partition`` (write it before the parquet part)."""
    path = part_path(out, name, partition, ".npy")
    output.publish(path, lambda stream: np.save(stream, np.ascontiguousarray(array, dtype=np.float32)))
    return path


def read_array(out: str | Path | RemotePath, name: str, partition: int, mmap: bool = True) -> np.ndarray:
    """The ``.npy`` matrix of part ``partition``: memory-mapped locally, read into memory from a store (never
    with pickles: :class:`SchemaError` for anything but a plain array)."""
    path = part_path(out, name, partition, ".npy")
    try:
        if isinstance(path, RemotePath):
            return np.load(output.readable(path), allow_pickle=False)
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, EOFError) as error:  # never unpickled: an array of Python objects is refused
        raise SchemaError(f"{path}: not a plain array ({error})") from None


def done_parts(out: str | Path | RemotePath, name: str) -> set[int]:
    """Partitions whose part of table ``name`` has been published."""
    return {int(Path(file).stem.split("-")[1]) for file in output.names(table_dir(out, name), "part-*.parquet")}


def read_part(out: str | Path | RemotePath, name: str, partition: int) -> pa.Table:
    path = part_path(out, name, partition)
    return validate(_read(path), name, str(path))


def read_table(out: str | Path | RemotePath, name: str) -> pa.Table:
    """All parts of table ``name``, in partition order, validated; :class:`SchemaError` when there are none."""
    directory = table_dir(out, name)
    paths = [directory / file for file in output.names(directory, "part-*.parquet")]
    if not paths:
        raise SchemaError(f"{directory}: no '{name}' table yet; run the stage that writes it")
    parts = [validate(_read(path), name, str(path)) for path in paths]
    return pa.concat_tables(parts).unify_dictionaries()  # one dictionary per column: group_by needs it


def _read(path: Location) -> pa.Table:
    try:
        return pq.read_table(output.readable(path))
    except (OSError, pa.ArrowInvalid) as error:
        raise SchemaError(f"{path}: not a readable parquet file ({error})") from None
