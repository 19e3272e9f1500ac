"""The tables as people query them: DuckDB reads them as a parquet dataset with timestamps, labels as strings,
column descriptions in pyarrow, and joins across tables."""

from __future__ import annotations

import json
from contextlib import nullcontext
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from dinolab.curate import tables
from dinolab.curate.lakes.sets import ImageSet
from lakes import write_lake
from dinolab.pipelines import state
from dinolab.pipelines.dispatch import LoopExecutor
from dinolab.pipelines.run import run_curation
from dinolab.schemas.config import load_config
from dinolab.schemas.tables import LABEL, TABLES, TIME, time_columns

CONFIG = Path(__file__).resolve().parent.parent / "pipelines" / "configs" / "demo.yaml"


@pytest.fixture(scope="module")
def run_out(tmp_path_factory):
    """A whole run of every stage in this process on a small lake (five ingest partitions)."""
    root = tmp_path_factory.mktemp("query")
    folders = write_lake(root, pool=30, curated=4, evals=2)
    config = load_config(CONFIG, ["ingest.partition_size=16", "shard.max_samples=10", "report.examples=2"])
    sets = [ImageSet(str(folders["pool"]), "pool", "pool"), ImageSet(str(folders["curated"]), "curated", "queries"),
            ImageSet(str(folders["eval"]), "eval", "bench")]
    out = root / "out"
    started = datetime.now(timezone.utc)
    run_curation(out, sets, config, nullcontext(LoopExecutor()), Console(quiet=True), until="shard")
    return out, started


def test_the_embeddings_are_a_parquet_table_and_a_precomputed_embeddings_folder(run_out):
    """``tables/embeddings`` holds parquet alone; the vectors sit in LAION's layout, row for row with metadata."""
    out, _ = run_out
    rows = duckdb.connect().execute(f"SELECT key, row FROM read_parquet('{out}/tables/embeddings/*')").fetchall()
    assert len(rows) == len(tables.read_table(out, "embeddings")) > 0
    for partition in sorted(tables.done_parts(out, "embeddings")):
        part = tables.read_part(out, "embeddings", partition)
        metadata = pq.read_table(out / "embeddings" / "metadata" / f"metadata_{partition:05d}.parquet")
        vectors = np.load(out / "embeddings" / "img_emb" / f"img_emb_{partition:05d}.npy")
        assert len(metadata) == len(vectors) == len(part)
        assert metadata.column("key").to_pylist() == part.sort_by("row").column("key").to_pylist()
        assert all(path.startswith(str(out.parent)) for path in metadata.column("image_path").to_pylist())


def test_duckdb_reads_every_table_with_timestamps_and_labels_as_strings(run_out):
    out, started = run_out
    connection = duckdb.connect()
    for name in TABLES:
        connection.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{out}/tables/{name}/part-*.parquet')")
    types = {name: dict(connection.execute(f"SELECT column_name, column_type FROM (DESCRIBE {name})").fetchall())
             for name in TABLES}
    assert types["images"]["ingested_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["selection"]["selected_at"] == types["shards"]["written_at"] == "TIMESTAMP WITH TIME ZONE"
    for name, spec in TABLES.items():
        for field in spec.fields:
            if field.type == LABEL:
                assert types[name][field.name] == "VARCHAR", (name, field.name)
    assert connection.execute("SELECT count(*), count(DISTINCT partition) FROM images").fetchone() == (
        len(tables.read_table(out, "images")), 5)  # pool 3, curated 1, eval 1
    ingested = connection.execute("SELECT min(ingested_at), max(ingested_at) FROM images").fetchone()
    assert started - timedelta(seconds=1) <= ingested[0] <= ingested[1] <= datetime.now(timezone.utc)
    statuses = dict(connection.execute("SELECT status, count(*) FROM images GROUP BY status").fetchall())
    assert statuses == {"ok": statuses["ok"], "error": 2} and statuses["ok"] > 30

    # which images were selected, from which set and status, and where in the shards they are
    joined = connection.execute("""
        SELECT s.key, i.set, i.status, i.format, d.kept, h.shard, h.member, i.ingested_at, d.group
        FROM selection s JOIN images i USING (key) JOIN duplicates d USING (key) JOIN shards h USING (key)
        ORDER BY s.key""").fetchall()  # the query of docs/curation.md, and more
    assert len(joined) == len(tables.read_table(out, "selection")) > 0
    assert all(row[1] == "pool" and row[2] == "ok" and row[4] is True for row in joined)
    assert {row[5] for row in joined} == {p.name for p in (out / "shards").glob("*.tar")}
    assert all(row[6].startswith(f"{row[0]}.") for row in joined)
    reasons = dict(connection.execute(
        "SELECT reason, count(*) FROM duplicates WHERE NOT kept GROUP BY reason").fetchall())
    assert reasons.get("leak:bench") == 2


def test_columns_describe_themselves_and_labels_are_dictionaries(run_out):
    out, _ = run_out
    for name, spec in TABLES.items():
        schema = pq.read_schema(tables.part_path(out, name, 0))
        assert schema.metadata[b"description"] == spec.doc.encode()
        for field in spec.fields:
            read = schema.field(field.name)
            assert read.metadata[b"description"] == field.metadata[b"description"] != b""
            assert read.type == field.type
    images = pq.read_schema(tables.part_path(out, "images", 0))
    assert images.field("status").type == images.field("role").type == LABEL
    assert images.field("ingested_at").type == TIME and TIME.tz == "UTC"
    assert time_columns("images") == ["ingested_at"] and time_columns("clusters") == []
    table = tables.read_table(out, "images")  # parts of several dictionaries read back as one
    assert pa.types.is_dictionary(table.schema.field("set").type)
    assert table.group_by("set").aggregate([("key", "count")]).num_rows == 3


def test_the_run_records_when_it_was_made_and_keeps_its_first_time(run_out):
    out, started = run_out
    run = json.loads((out / "run.json").read_text())
    created = datetime.fromisoformat(run["created_at"])
    assert created.tzinfo is not None and started - timedelta(seconds=1) <= created <= datetime.now(timezone.utc)
    state.prepare(out, state.recorded_sets(out), load_config(CONFIG, ["ingest.partition_size=16",
                                                                        "shard.max_samples=10", "report.examples=2"]))
    again = json.loads((out / "run.json").read_text())
    assert again["created_at"] == run["created_at"] and again["updated_at"] >= run["updated_at"]


def test_counts_and_column_scans_read_part_by_part_what_the_whole_table_holds(run_out):
    out, _ = run_out
    for name in ("images", "duplicates", "selection"):
        whole = tables.read_table(out, name)
        assert tables.row_count(out, name) == len(whole)
        parts = list(tables.read_columns(out, name, ["key"]))
        assert len(parts) == len(tables.done_parts(out, name)) > 1 or name == "selection"
        assert all(part.column_names == ["key"] for part in parts)
        assert sorted(key for part in parts for key in part["key"].to_pylist()) == sorted(whole["key"].to_pylist())
