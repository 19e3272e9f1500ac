"""Table schemas refuse foreign or stale tables; the pipeline config refuses unknown keys and wrong types."""

from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dinolab.curate import tables
from dinolab.schemas.config import ConfigError, load_config
from dinolab.schemas.tables import IMAGES, TABLES, SchemaError, validate

CONFIGS = __import__("pathlib").Path(__file__).resolve().parent.parent / "pipelines" / "configs"


def _selection(rows: int = 2) -> pa.Table:
    return pa.table({"key": [f"k{i}" for i in range(rows)], "uri": ["u"] * rows, "method": ["all"] * rows,
                     "query_key": [None] * rows, "cluster": [0] * rows, "similarity": [None] * rows,
                     "selected_at": [datetime(2026, 1, 2, tzinfo=timezone.utc)] * rows},
                    schema=TABLES["selection"].schema)


def test_every_table_names_itself_and_its_version():
    for name, spec in TABLES.items():
        metadata = spec.schema.metadata
        assert metadata[b"dinolab.table"] == name.encode() and metadata[b"dinolab.schema_version"] == str(
            spec.version).encode()
        assert all(field.metadata[b"description"] for field in spec.fields), name


def test_a_foreign_stale_or_reshaped_table_is_refused(tmp_path):
    table = _selection()
    assert validate(table, "selection") is table
    with pytest.raises(SchemaError, match="not a dinolab 'images' table"):
        validate(table, "images")
    stale = table.replace_schema_metadata({b"dinolab.table": b"selection", b"dinolab.schema_version": b"0"})
    with pytest.raises(SchemaError, match="schema version 0"):
        validate(stale, "selection")
    with pytest.raises(SchemaError, match="missing"):
        validate(table.drop_columns(["cluster"]).replace_schema_metadata(table.schema.metadata), "selection")
    with pytest.raises(SchemaError, match="not a dinolab"):
        validate(pa.table({"key": ["a"]}), "selection")
    with pytest.raises(SchemaError, match="nulls"):
        validate(pa.table({n: [None] for n in IMAGES.schema.names}, schema=IMAGES.schema.with_metadata(
            IMAGES.schema.metadata)), "images")


def test_parts_are_published_whole_and_checked_when_read(tmp_path):
    tables.write_part(tmp_path, "selection", 3, _selection())
    assert tables.done_parts(tmp_path, "selection") == {3}
    assert not [p for p in tables.table_dir(tmp_path, "selection").iterdir() if p.name.startswith(".")]
    assert tables.read_table(tmp_path, "selection").equals(_selection())
    pq.write_table(pa.table({"key": ["x"]}), tables.part_path(tmp_path, "selection", 4))  # a foreign part
    with pytest.raises(SchemaError, match="part-00004.parquet: not a dinolab 'selection' table"):
        tables.read_table(tmp_path, "selection")
    tables.part_path(tmp_path, "selection", 4).write_bytes(b"garbage")
    with pytest.raises(SchemaError, match="not a readable parquet file"):
        tables.read_table(tmp_path, "selection")
    with pytest.raises(SchemaError, match="no 'clusters' table yet"):
        tables.read_table(tmp_path, "clusters")


def test_named_configs_load_and_overrides_are_typed():
    lvd = load_config(CONFIGS / "lvd.yaml")
    assert (lvd.dedup.k, lvd.dedup.threshold, lvd.dedup.eval_threshold, lvd.sample.per_query) == (64, 0.6, 0.45, 4)
    assert (lvd.sample.per_cluster, lvd.sample.min_cluster_hits) == (10_000, 4)
    demo = load_config(CONFIGS / "demo.yaml", ["dedup.threshold=0.5", "cluster.ks=[8, 2]", "dedup.center=false"])
    assert demo.dedup.threshold == 0.5 and demo.cluster.ks == (8, 2) and demo.dedup.center is False
    assert demo.digest() != load_config(CONFIGS / "demo.yaml").digest()


@pytest.mark.parametrize("override, message", [
    ("dedup.nope=1", "unknown config key dedup.nope"),
    ("nope.k=1", "unknown config section 'nope'"),
    ("dedup.k=1.5", "expected an integer"),
    ("dedup.center=maybe", "expected true or false"),
    ("sample.method=best", "choose one of"),
    ("threshold", "section.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_a_bad_yaml_file_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("dedup: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("dedup: 3")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path / "b.yaml")
