"""The embedded demo lake: its parts, names that tell nothing, the ground truth, and the curation measure."""

from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dinolab.curate import tables
from dinolab.pipelines.demo_lake import COPY_KINDS, LakeSizes, build_demo_lake, curation_quality
from dinolab.schemas.tables import SELECTION

SIZES = LakeSizes(fashion=60, seeds=5, tiles=10, noise=4, copies_per_kind=2, leaks=3, evaluation=8)


def test_the_lake_holds_what_its_truth_says_and_is_built_once(tmp_path):
    lake = build_demo_lake(tmp_path / "lake", SIZES)
    truth = pq.read_table(lake.truth).to_pylist()
    pool = sorted(p.name for p in lake.pool.iterdir())
    assert pool == sorted(row["file"] for row in truth)
    counts = {source: sum(row["source"] == source for row in truth) for source in {row["source"] for row in truth}}
    assert counts["fashion"] == 60 and counts["tiles"] == 10 and counts["noise"] == 4 and counts["leak"] == 3
    assert counts["digits"] == 1797 and all(counts[f"copy:{kind}"] == 2 for kind in COPY_KINDS)
    assert len(list(lake.seeds.iterdir())) == 5 and len(list(lake.evaluation.iterdir())) == 8
    assert all(len(Path(name).stem) == 12 and int(Path(name).stem, 16) >= 0 for name in pool)  # random hex only
    copies = [row for row in truth if row["source"] == "copy:exact"]
    assert all((lake.pool / c["file"]).read_bytes() == (lake.pool / c["copy_of"]).read_bytes() for c in copies)
    before = {p.name: p.stat().st_mtime_ns for p in lake.pool.iterdir()}
    build_demo_lake(tmp_path / "lake", SIZES)
    assert {p.name: p.stat().st_mtime_ns for p in lake.pool.iterdir()} == before


def test_curation_quality_counts_precision_surviving_copies_and_leaks(tmp_path):
    lake = build_demo_lake(tmp_path / "lake", SIZES)
    truth = pq.read_table(lake.truth).to_pylist()
    copy = next(row for row in truth if row["source"] == "copy:flip")
    chosen = [copy["file"], copy["copy_of"], next(r["file"] for r in truth if r["source"] == "noise"),
              next(r["file"] for r in truth if r["source"] == "leak")]
    rows = [{"key": f"k{i}", "uri": str(lake.pool / name), "method": "all", "query_key": None, "cluster": 0,
             "similarity": None, "selected_at": datetime(2026, 1, 2, tzinfo=timezone.utc)}
            for i, name in enumerate(chosen)]
    tables.write_part(tmp_path / "out", "selection", 0, pa.Table.from_pylist(rows, schema=SELECTION.schema))
    quality = curation_quality(lake, tmp_path / "out")
    assert quality["selected"] == 4 and quality["precision"] == 0.5
    assert quality["copies_surviving"] == 1 and quality["leaks_surviving"] == 1 and quality["off_domain_selected"] == 1
