"""The list stage: the ``files`` table it writes through the dispatcher (as Dask tasks and in a loop) is the
listing of :func:`curate.lakes.sets.files_table` for local folders and of :mod:`curate.lakes.listing` for tar
and parquet lakes; a done listing is skipped, a damaged part is listed again, a changed config relists."""

from __future__ import annotations

import io
from contextlib import nullcontext
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster
from PIL import Image
from rich.console import Console

from dinolab.curate import listing_steps, stages, tables
from dinolab.curate.lakes import LakeError, listing
from dinolab.curate.lakes.sets import ImageSet, files_table
from dinolab.pipelines.dispatch import DaskExecutor, LoopExecutor
from dinolab.pipelines.run import run_curation
from dinolab.schemas.config import load_config
from dinolab.schemas.tables import time_columns
from lakes import write_hf_parquet, write_i2d_webdataset

CONFIG = load_config(None, ["ingest.partition_size=2", "ingest.min_side=8"])


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster, Client(cluster) as client:
        yield client


def executor(client, kind: str, console: Console):
    return DaskExecutor(client, console) if kind == "dask" else LoopExecutor(console)


def run(out: Path, sets: list[ImageSet], executor, until: str = "list", config=CONFIG, **extra) -> str:
    """``run_curation`` up to ``until``; returns what it printed."""
    console = executor.console
    console.file.seek(0)
    console.file.truncate()
    run_curation(out, sets, config, nullcontext(executor), console, until=until, **extra)
    return console.file.getvalue()


def quiet_console() -> Console:
    return Console(file=io.StringIO(), highlight=False, width=200)


def folder_lake(root: Path) -> list[ImageSet]:
    for name, count in (("pool", 5), ("curated", 3)):
        (root / name / "sub").mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (16, 16), (40 * i, 10, 200)).save(root / name / ("sub" if i % 2 else "") / f"{i}.png")
    return [ImageSet(str(root / "pool"), "pool", "pool"), ImageSet(str(root / "curated"), "curated", "curated")]


def container_lake(root: Path) -> list[ImageSet]:
    """A folder of img2dataset tars (the pool) and a parquet file of image bytes (the curated set)."""
    write_i2d_webdataset(root / "shards", shards=2, per_shard=3)
    write_hf_parquet(root / "hf" / "train.parquet", rows=3)
    return [ImageSet(str(root / "shards"), "pool", "shards"), ImageSet(str(root / "hf" / "train.parquet"), "curated", "hf")]


def reference_listing(out: Path, sets: list[ImageSet]) -> pa.Table:
    """The listing of :mod:`curate.lakes.listing`, its units listed and published one after the other."""
    units = [unit for image_set in sets for unit in listing.units(image_set, CONFIG)]
    counts = [listing.list_unit(out, n, unit, CONFIG) for n, unit in enumerate(units)]
    for n, (unit, first) in enumerate(zip(units, listing.first_partitions(counts, 2))):
        listing.publish_unit(out, n, unit, first, 2)
    listing.finish(out)
    return tables.read_table(out, "files")


def assert_listed(out: Path, expected: pa.Table) -> None:
    assert tables.read_table(out, "files").to_pylist() == expected.to_pylist()
    assert listing_steps.complete(out) and not listing.in_progress(out)
    assert set(listing_steps.listing_record(out)) == {f"tables/files/part-{p:05d}.parquet"
                                                     for p in set(expected.column("partition").to_pylist())}


@pytest.mark.parametrize("kind", ["loop", "dask"])
def test_a_folder_lake_is_listed_as_files_table_lists_it(tmp_path, client, kind):
    sets = folder_lake(tmp_path / "lake")
    out = tmp_path / "out"
    run(out, sets, executor(client, kind, quiet_console()))
    expected = files_table(sets, 2)
    assert expected.column("partition").to_pylist() == [0, 0, 1, 1, 2, 3, 3, 4]  # partitions never span sets
    assert_listed(out, expected)
    assert stages.timings(out)["list"]["tasks"] == 2  # the client unit, the finish
    assert stages.stage_records(out, ["list"])[0]["images_out"] == 8


@pytest.mark.parametrize("kind", ["loop", "dask"])
def test_a_tar_and_parquet_lake_is_listed_as_the_split_listing_lists_it(tmp_path, client, kind):
    sets = container_lake(tmp_path / "lake")
    out = tmp_path / "out"
    printed = run(out, sets, executor(client, kind, quiet_console()))
    expected = reference_listing(tmp_path / "reference", sets)
    assert len(expected) == 9 and expected.column("partition").to_pylist() == [0, 0, 1, 2, 2, 3, 4, 4, 5]
    assert_listed(out, expected)
    assert stages.timings(out)["list"]["tasks"] == 2 + 3 + 3 + 1  # split per set, list and publish per unit, finish
    if kind == "dask":
        assert "list split (2 units)" in printed and "list (3 units)" in printed and "list publish" in printed


@pytest.mark.parametrize("kind", ["loop", "dask"])
def test_a_listing_the_caller_made_is_published_and_a_done_listing_is_kept(tmp_path, client, kind):
    sets = folder_lake(tmp_path / "lake")
    out = tmp_path / "out"
    given = files_table(sets, 2)
    runner = executor(client, kind, quiet_console())
    run(out, sets, runner, listing=given)
    assert_listed(out, given)
    assert not (out / "tables" / "files" / listing.STAGING).exists()  # the staged listing is gone
    parts = {path.name: path.stat().st_mtime_ns for path in (out / "tables" / "files").glob("part-*.parquet")}
    seconds = stages.timings(out)["list"]
    (tmp_path / "lake" / "pool" / "4.png").unlink()  # a resumed run does not list the lake again
    printed = run(out, sets, runner, listing=files_table(sets, 2))
    assert "list: done already, skipped" in printed
    assert {path.name: path.stat().st_mtime_ns for path in (out / "tables" / "files").glob("part-*.parquet")} == parts
    assert stages.timings(out)["list"] == seconds
    assert not (out / "tables" / "files" / listing.STAGING).exists()


@pytest.mark.parametrize("kind", ["loop", "dask"])
def test_a_damaged_part_is_listed_again_and_only_its_partition_ingested_again(tmp_path, client, kind):
    sets = container_lake(tmp_path / "lake")
    out = tmp_path / "out"
    runner = executor(client, kind, quiet_console())
    run(out, sets, runner, until="ingest")
    images = tables.read_table(out, "images").drop_columns(time_columns("images"))
    tables.part_path(out, "files", 2).unlink()
    printed = run(out, sets, runner, until="ingest")
    assert "damaged, redoing it and what depends on it: list listing: tables/files/part-00002.parquet: missing" in printed
    assert "list: done already" not in printed
    assert_listed(out, reference_listing(tmp_path / "reference", sets))
    assert stages.timings(out)["ingest"]["tasks"] == 1  # the partition whose part was lost, alone
    assert tables.read_table(out, "images").drop_columns(time_columns("images")).equals(images)


def test_a_changed_partition_size_relists_and_a_lake_error_is_raised_where_the_stage_runs(tmp_path, client):
    sets = folder_lake(tmp_path / "lake")
    out = tmp_path / "out"
    runner = executor(client, "dask", quiet_console())
    run(out, sets, runner)
    bigger = load_config(None, ["ingest.partition_size=3", "ingest.min_side=8"])
    printed = run(out, sets, runner, config=bigger)
    assert "config changed: redoing list, ingest, embed" in printed
    assert_listed(out, files_table(sets, 3))

    pq.write_table(pa.table({"caption": ["x", "y"]}), tmp_path / "t.parquet")  # no column of image bytes
    bad = tmp_path / "bad"
    with pytest.raises(LakeError, match="no column 'image'"):
        run(bad, [ImageSet(str(tmp_path / "t.parquet"), "pool", "t")], runner)
    assert not tables.done_parts(bad, "files") and not listing_steps.complete(bad)
