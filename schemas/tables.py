"""Arrow schemas of every table the pipeline writes, versioned, and their validation.

Each table lives in ``OUT/tables/<name>/part-*.parquet``. The schema's metadata names the table and its
version (``dinolab.table``, ``dinolab.schema_version``); :func:`validate` refuses a table whose name,
version or columns differ, so a stage never reads a foreign or stale table::

    table = pa.Table.from_pylist(rows, schema=TABLES["images"].schema)
    validate(table, "images")
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

TABLE_KEY = b"dinolab.table"
VERSION_KEY = b"dinolab.schema_version"


class SchemaError(ValueError):
    """A table that is not the one a stage expects (wrong name, version or columns)."""


@dataclass(frozen=True)
class TableSpec:
    """A table's name, version and columns; ``schema`` carries name and version in its metadata."""

    name: str
    version: int
    fields: tuple[pa.Field, ...]
    doc: str

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(list(self.fields), metadata={TABLE_KEY: self.name.encode(), VERSION_KEY: str(self.version).encode()})


def _spec(name: str, version: int, doc: str, *fields: tuple) -> TableSpec:
    return TableSpec(name, version, tuple(pa.field(*field) for field in fields), doc)


ROLES = ("pool", "curated", "eval")
"""What a set is for: ``pool`` is curated, ``curated`` sets are retrieval queries, ``eval`` sets are kept out."""

FILES = _spec(
    "files", 1, "the listing of every set: one row per file, its key and the ingest partition that reads it",
    ("key", pa.string(), False), ("uri", pa.string(), False), ("role", pa.string(), False),
    ("set", pa.string(), False), ("partition", pa.int32(), False),
)

IMAGES = _spec(
    "images", 2, "ingest: bytes, hash and metadata of every file; status ok / error / filtered with the reason; "
    "provenance: the lake's own metadata of the image as JSON text (curate.lakes.provenance)",
    ("key", pa.string(), False), ("uri", pa.string(), False), ("role", pa.string(), False),
    ("set", pa.string(), False), ("partition", pa.int32(), False),
    ("bytes", pa.int64()), ("sha256", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("format", pa.string()), ("phash", pa.string()), ("status", pa.string(), False), ("error", pa.string()),
    ("provenance", pa.string()),
)

EMBEDDINGS = _spec(
    "embeddings", 1, "embed: row ``row`` of the partition's ``part-NNNNN.npy`` (float32 [n, dim]) is this key's vector",
    ("key", pa.string(), False), ("role", pa.string(), False), ("set", pa.string(), False), ("row", pa.int32(), False),
)

DUPLICATES = _spec(
    "duplicates", 1, "dedup: every readable pool image, its duplicate group and whether it is kept, and why not",
    ("key", pa.string(), False), ("uri", pa.string(), False), ("group", pa.int64(), False),
    ("kept", pa.bool_(), False), ("reason", pa.string()), ("kept_key", pa.string()), ("similarity", pa.float32()),
)

CLUSTERS = _spec(
    "clusters", 1, "cluster: hierarchical k-means labels of each kept pool image, finest level first",
    ("key", pa.string(), False), ("uri", pa.string(), False), ("cluster", pa.int32(), False),
    ("levels", pa.list_(pa.int32()), False),
)

SELECTION = _spec(
    "selection", 1, "sample: the selected pool images and how each was chosen",
    ("key", pa.string(), False), ("uri", pa.string(), False), ("method", pa.string(), False),
    ("query_key", pa.string()), ("cluster", pa.int32()), ("similarity", pa.float32()),
)

SHARDS = _spec(
    "shards", 1, "shard: the webdataset shard and tar member holding each selected image",
    ("key", pa.string(), False), ("shard", pa.string(), False), ("member", pa.string(), False),
    ("index", pa.int32(), False),
)

TABLES: dict[str, TableSpec] = {spec.name: spec for spec in (FILES, IMAGES, EMBEDDINGS, DUPLICATES, CLUSTERS, SELECTION, SHARDS)}


def validate(table: pa.Table, name: str, source: str = "table") -> pa.Table:
    """``table`` if it is table ``name`` at the current version with exactly its columns, else :class:`SchemaError`.

    ``source`` (e.g. the file path) starts the error message.
    """
    spec = TABLES[name]
    metadata = table.schema.metadata or {}
    found_name = metadata.get(TABLE_KEY, b"").decode() or None
    if found_name != name:
        raise SchemaError(f"{source}: not a dinolab '{name}' table (it says table={found_name!r})")
    found_version = metadata.get(VERSION_KEY, b"").decode()
    if found_version != str(spec.version):
        raise SchemaError(
            f"{source}: '{name}' table of schema version {found_version or '?'}, this dinolab reads version "
            f"{spec.version}; rerun the stage that writes it"
        )
    expected = spec.schema
    if not table.schema.remove_metadata().equals(expected.remove_metadata()):
        missing = sorted(set(expected.names) - set(table.schema.names))
        extra = sorted(set(table.schema.names) - set(expected.names))
        detail = f"missing {missing}" if missing else f"unexpected {extra}" if extra else "column types differ"
        raise SchemaError(f"{source}: '{name}' table does not match its schema ({detail})")
    for field in expected:
        if not field.nullable and table.column(field.name).null_count:
            raise SchemaError(f"{source}: '{name}' table has nulls in non-nullable column {field.name!r}")
    return table
