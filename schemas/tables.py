"""Arrow schemas of every table the pipeline writes, versioned, and their validation.

Each table lives in ``OUT/tables/<name>/part-*.parquet``. The schema's metadata names the table and its
version (``dinolab.table``, ``dinolab.schema_version``); :func:`validate` refuses a table whose name,
version or columns differ, so a stage never reads a foreign or stale table. Every column carries its
description (field metadata ``description``); low-cardinality strings are dictionary-encoded
(:data:`LABEL`); ``*_at`` columns are UTC timestamps of when the row was written::

    table = pa.Table.from_pylist(rows, schema=TABLES["images"].schema)
    validate(table, "images")
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

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
        metadata = {TABLE_KEY: self.name.encode(), VERSION_KEY: str(self.version).encode(),
                    DESCRIPTION: self.doc.encode()}
        return pa.schema(list(self.fields), metadata=metadata)


LABEL = pa.dictionary(pa.int32(), pa.string())
"""Low-cardinality strings (role, set, status, format, reason, method, shard): dictionary-encoded, read as strings."""
TIME = pa.timestamp("us", tz="UTC")
"""When a row was written (UTC, microseconds)."""
DESCRIPTION = b"description"
"""Field metadata key of each column's description (``schema.field("uri").metadata[b"description"]``)."""


def _spec(name: str, version: int, doc: str, *fields: tuple) -> TableSpec:
    """Fields as ``(name, type, description)`` or ``(name, type, nullable, description)``."""
    built = []
    for field in fields:
        column, kind, *nullable, description = field
        built.append(pa.field(column, kind, *nullable, metadata={DESCRIPTION: description.encode()}))
    return TableSpec(name, version, tuple(built), doc)


def utc_now() -> datetime:
    """The time written in the timestamp columns (:data:`TIME`)."""
    return datetime.now(timezone.utc)


def time_columns(name: str) -> list[str]:
    """The timestamp columns of table ``name``: they differ between otherwise identical runs."""
    return [field.name for field in TABLES[name].fields if pa.types.is_timestamp(field.type)]


ROLES = ("pool", "curated", "eval")
"""What a set is for: ``pool`` is curated, ``curated`` sets are retrieval queries, ``eval`` sets are kept out."""

_KEY = "the image's key, unique across the run's sets (shard member names and every table use it)"
_URI = "where the image's bytes are: a path, a URL, tar://MEMBER::URL or parquet://COLUMN/ROW::URL"
_ROLE = "what the image's set is for: pool (curated), curated (retrieval queries) or eval (kept out)"
_SET = "the name of the image's set"
_PARTITION = "the ingest (and embed) partition that reads the file"

FILES = _spec(
    "files", 2, "the listing of every set: one row per file, its key and the ingest partition that reads it",
    ("key", pa.string(), False, _KEY), ("uri", pa.string(), False, _URI), ("role", LABEL, False, _ROLE),
    ("set", LABEL, False, _SET), ("partition", pa.int32(), False, _PARTITION),
)

IMAGES = _spec(
    "images", 3, "ingest: bytes, hash and metadata of every file; status ok / error / filtered with the reason; "
    "provenance: the lake's own metadata of the image as JSON text (curate.lakes.provenance)",
    ("key", pa.string(), False, _KEY), ("uri", pa.string(), False, _URI), ("role", LABEL, False, _ROLE),
    ("set", LABEL, False, _SET), ("partition", pa.int32(), False, _PARTITION),
    ("bytes", pa.int64(), "size of the file in bytes"), ("sha256", pa.string(), "sha256 of the file's bytes (hex)"),
    ("width", pa.int32(), "upright width in pixels (after EXIF orientation)"),
    ("height", pa.int32(), "upright height in pixels (after EXIF orientation)"),
    ("format", LABEL, "image format as Pillow names it (JPEG, PNG, ...)"),
    ("phash", pa.string(), "64-bit perceptual hash of the decoded image (hex)"),
    ("status", LABEL, False, "ok, filtered (too small) or error (unreadable, corrupt, bomb)"),
    ("error", pa.string(), "why the file is filtered or an error"),
    ("provenance", pa.string(), "what a tar or parquet lake says of the image (its json/txt members, the row's "
     "other columns), JSON text"),
    ("ingested_at", TIME, False, "when ingest read the file (UTC)"),
)

EMBEDDINGS = _spec(
    "embeddings", 3, "embed: row ``row`` of the partition's ``OUT/embeddings/img_emb/img_emb_NNNNN.npy`` (float32 "
    "[n, dim]; ``OUT/embeddings/metadata/metadata_NNNNN.parquet`` names its rows) is this key's vector",
    ("key", pa.string(), False, _KEY), ("role", LABEL, False, _ROLE), ("set", LABEL, False, _SET),
    ("row", pa.int32(), False, "row of this key's vector in the partition's img_emb_NNNNN.npy matrix"),
)

DUPLICATES = _spec(
    "duplicates", 2, "dedup: every readable pool image, its duplicate group and whether it is kept, and why not",
    ("key", pa.string(), False, _KEY), ("uri", pa.string(), False, _URI),
    ("group", pa.int64(), False, "duplicate group (connected component of copy links); a lone image is its own group"),
    ("kept", pa.bool_(), False, "whether the image stays in the pool"),
    ("reason", LABEL, "why it is removed: exact, near, copy or leak:<eval set>"),
    ("kept_key", pa.string(), "the key of the image it copies (the group's kept image, or the evaluation image)"),
    ("similarity", pa.float32(), "similarity of the link that removed it"),
)

CLUSTERS = _spec(
    "clusters", 1, "cluster: hierarchical k-means labels of each kept pool image, finest level first",
    ("key", pa.string(), False, _KEY), ("uri", pa.string(), False, _URI),
    ("cluster", pa.int32(), False, "finest-level cluster"),
    ("levels", pa.list_(pa.int32()), False, "cluster at every level, finest first"),
)

SELECTION = _spec(
    "selection", 2, "sample: the selected pool images and how each was chosen",
    ("key", pa.string(), False, _KEY), ("uri", pa.string(), False, _URI),
    ("method", LABEL, False, "how it was chosen: retrieval:neighbours, retrieval:clusters, balanced or all"),
    ("query_key", pa.string(), "the curated image that retrieved it"),
    ("cluster", pa.int32(), "its finest-level cluster"),
    ("similarity", pa.float32(), "cosine similarity to the curated image that retrieved it"),
    ("selected_at", TIME, False, "when the sample stage chose it (UTC)"),
)

SHARDS = _spec(
    "shards", 2, "shard: the webdataset shard and tar member holding each selected image",
    ("key", pa.string(), False, _KEY), ("shard", LABEL, False, "the shard file, in OUT/shards/"),
    ("member", pa.string(), False, "the tar member holding the image's original bytes (KEY.EXT)"),
    ("index", pa.int32(), False, "position of the sample in its shard"),
    ("written_at", TIME, False, "when the shard stage finished (UTC); never in the tars, which reruns reproduce"),
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
