"""benchmarks/pipeline.py's output check: two runs of the same lake compare equal whatever their write times,
and a changed row is seen."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from benchmarks import pipeline as bench
from dinolab.curate import tables
from dinolab.schemas.config import load_config


def test_fingerprints_ignore_the_times_of_writing_and_see_a_changed_row(tmp_path):
    config = load_config(bench.CONFIG, ["ingest.partition_size=40", "shard.max_samples=20", "embed.embedder=pixels",
                                        "embed.device=cpu", "cluster.ks=[4, 2]"])
    sets = bench.image_sets(bench.write_lake(tmp_path / "lake", images=90, photos=10, curated=12))
    first, second = tmp_path / "first", tmp_path / "second"
    bench.run_loop(first, sets, config)
    bench.run_loop(second, sets, config)
    assert tables.read_table(first, "images")["ingested_at"] != tables.read_table(second, "images")["ingested_at"]
    assert bench.compare_outputs({"first": first, "second": second}) == []
    part = min(tables.done_parts(second, "selection"))
    selection = tables.read_part(second, "selection", part)
    assert selection.num_rows > 0
    changed = selection.set_column(selection.schema.get_field_index("key"), "key",
                                   pc.binary_join_element_wise(selection["key"], pa.scalar("x"), ""))
    tables.write_part(second, "selection", part, changed)
    assert bench.compare_outputs({"first": first, "second": second}) == ["second differs from first: table selection"]
