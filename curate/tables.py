"""Tables on disk: ``OUT/tables/<name>/part-NNNNN.parquet``, written atomically, validated on read.

A part is written to a temporary name in the same folder and renamed into place (on an object store:
sent in one put, see :mod:`curate.output`), so a part that exists is complete: resuming a stage is
listing which parts exist, and ``tables/<name>/`` is a parquet dataset pandas, polars or DuckDB read as is.
Vectors that belong to a part (the embed stage's float32 matrix) are kept in the layout of precomputed
embeddings (LAION's, clip-retrieval's): ``OUT/<name>/img_emb/img_emb_NNNNN.npy`` and, row for row,
``OUT/<name>/metadata/metadata_NNNNN.parquet`` (``key``, ``image_path``...), written before the part.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dinolab.curate import output
from dinolab.curate.output import Location, RemotePath
from dinolab.schemas.tables import TABLES, SchemaError, validate


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


ARRAY_DIR, METADATA_DIR = "img_emb", "metadata"


def array_path(out: str | Path | RemotePath, name: str, partition: int) -> Location:
    """``OUT/<name>/img_emb/img_emb_NNNNN.npy``: the vectors of part ``partition`` of table ``name``."""
    return output.join(out, name, ARRAY_DIR, f"{ARRAY_DIR}_{partition:05d}.npy")


def metadata_path(out: str | Path | RemotePath, name: str, partition: int) -> Location:
    """``OUT/<name>/metadata/metadata_NNNNN.parquet``: one row per row of :func:`array_path`, in its order."""
    return output.join(out, name, METADATA_DIR, f"{METADATA_DIR}_{partition:05d}.parquet")


def write_array(out: str | Path | RemotePath, name: str, partition: int, array: np.ndarray,
                metadata: pa.Table) -> Location:
    """Publish the matrix of part ``partition`` and its ``metadata`` rows (write them before the parquet part)."""
    if len(metadata) != len(array):
        raise ValueError(f"{len(metadata)} metadata rows for {len(array)} vectors")
    output.publish(metadata_path(out, name, partition),
                   lambda stream: pq.write_table(metadata, stream, compression="zstd"))
    path = array_path(out, name, partition)
    output.publish(path, lambda stream: np.save(stream, np.ascontiguousarray(array, dtype=np.float32)))
    return path


def read_array(out: str | Path | RemotePath, name: str, partition: int, mmap: bool = True) -> np.ndarray:
    """The matrix of part ``partition`` (:func:`array_path`): memory-mapped locally, read into memory from a
    store (never with pickles: :class:`SchemaError` for anything but a plain array)."""
    path = array_path(out, name, partition)
    try:
        if isinstance(path, RemotePath):
            return np.load(output.readable(path), allow_pickle=False)
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, EOFError) as error:  # never unpickled: an array of Python objects is refused
        raise SchemaError(f"{path}: not a plain array ({error})") from None


def part_number(name: str) -> int | None:
    """The partition of a ``part-NNNNN.*`` file name or path (``None`` for another name)."""
    found = re.fullmatch(r"part-(\d+)\.\w+", name.rsplit("/", 1)[-1])
    return int(found.group(1)) if found else None


def done_parts(out: str | Path | RemotePath, name: str) -> set[int]:
    """Partitions whose part of table ``name`` has been published."""
    return {int(Path(file).stem.split("-")[1]) for file in output.names(table_dir(out, name), "part-*.parquet")}


def read_part(out: str | Path | RemotePath, name: str, partition: int) -> pa.Table:
    path = part_path(out, name, partition)
    return validate(_read(path), name, str(path))


def read_table(out: str | Path | RemotePath, name: str) -> pa.Table:
    """All parts of table ``name``, in partition order, validated; :class:`SchemaError` when there are none."""
    directory = table_dir(out, name)
    paths = _part_paths(out, name)
    if not paths:
        raise SchemaError(f"{directory}: no '{name}' table yet; run the stage that writes it")
    parts = [validate(_read(path), name, str(path)) for path in paths]
    return pa.concat_tables(parts).unify_dictionaries()  # one dictionary per column: group_by needs it


def check_schemas(out: str | Path | RemotePath, name: str) -> None:
    """:class:`SchemaError` unless every part of table ``name`` has its schema (read from the parquet footers)."""
    for path in _part_paths(out, name):
        try:
            schema = pq.read_schema(output.readable(path))
        except (OSError, pa.ArrowInvalid) as error:
            raise SchemaError(f"{path}: not a readable parquet file ({error})") from None
        validate(schema.empty_table(), name, str(path))


def _part_paths(out: str | Path | RemotePath, name: str) -> list[Location]:
    """The parquet parts of table ``name``, in partition order."""
    directory = table_dir(out, name)
    return [directory / file for file in output.names(directory, "part-*.parquet")]


def read_columns(out: str | Path | RemotePath, name: str, columns: list[str]) -> Iterator[pa.Table]:
    """Each part of table ``name`` in partition order, only its ``columns``: a scan that holds one part's columns at
    a time, not the whole table."""
    for path in _part_paths(out, name):
        try:
            yield pq.read_table(output.readable(path), columns=columns)
        except (OSError, pa.ArrowInvalid) as error:
            raise SchemaError(f"{path}: not a readable '{name}' part with columns {columns} ({error})") from None


def row_count(out: str | Path | RemotePath, name: str) -> int:
    """Rows of table ``name``, from its parts' parquet footers (no column is read)."""
    total = 0
    for path in _part_paths(out, name):
        try:
            total += pq.ParquetFile(output.readable(path)).metadata.num_rows
        except (OSError, pa.ArrowInvalid) as error:
            raise SchemaError(f"{path}: not a readable parquet file ({error})") from None
    return total


def _read(path: Location) -> pa.Table:
    try:
        return pq.read_table(output.readable(path))
    except (OSError, pa.ArrowInvalid) as error:
        raise SchemaError(f"{path}: not a readable parquet file ({error})") from None
