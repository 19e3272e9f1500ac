"""What the output folder guarantees (docs/curation.md, "What the output folder guarantees"): nothing in it
is read as code, everything a stage writes is declared and invalidated with it, damage is found and
repaired, only the run's own files are removed, and sets are recorded by their resolved location.

The runs share one Dask cluster (``--scheduler``) so each costs seconds, not a cluster start."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from distributed import LocalCluster
from PIL import Image
from typer.testing import CliRunner

from dinolab.curate import output, stages, tables
from dinolab.curate.copydetect.features import part_path, partition_features
from dinolab.curate.lakes.sets import ImageSet
from lakes import write_lake
from dinolab.pipelines.cli import app
from dinolab.pipelines.state import check
from dinolab.pretrain.data.fashion_mnist import load_fashion_mnist
from dinolab.schemas.tables import SchemaError, time_columns

runner = CliRunner()
DEMO = ["--config", "demo", "ingest.partition_size=12", "shard.max_samples=8"]


def curate(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


class Planted:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# -- nothing in OUT is read as code ------------------------------------------------------------------------


def _images_table(folder: Path, count: int = 3) -> pa.Table:
    images, _ = load_fashion_mnist("train", limit=count)
    rows = []
    for i, pixels in enumerate(images.numpy()):
        path = folder / f"fm_{i}.png"
        Image.fromarray(pixels).resize((96, 96)).save(path)
        rows.append({"key": f"fm_{i}", "uri": str(path), "status": "ok", "role": "pool", "sha256": f"{i:064x}"})
    return pa.Table.from_pylist(rows)


@pytest.mark.parametrize("planted", ["pickle at the old path", "pickle at the new path", "object array at the new path"])
def test_a_planted_pickle_in_the_copy_detection_cache_is_never_executed(tmp_path, planted):
    out, marker = tmp_path / "out", tmp_path / "executed"
    images = _images_table(tmp_path)
    payload = pickle.dumps({"fm_0": Planted(marker)})
    (out / "copydetect").mkdir(parents=True)
    if planted == "pickle at the old path":
        (out / "copydetect" / "part-00000.pkl").write_bytes(payload)
    elif planted == "pickle at the new path":
        part_path(out, 0).write_bytes(payload)
    else:
        with open(part_path(out, 0), "wb") as stream:
            np.savez(stream, keys=np.array([Planted(marker)], dtype=object), source=np.array("x"))
    features = partition_features(out, 0, images, max_pixels=10_000_000)
    assert not marker.exists()
    assert sorted(features) == ["fm_0", "fm_1", "fm_2"] and len(features["fm_1"].local) > 0
    again = partition_features(out, 0, images, max_pixels=10_000_000)  # now read from the rebuilt cache
    assert sorted(again) == sorted(features)
    np.testing.assert_array_equal(again["fm_1"].local.descriptors, features["fm_1"].local.descriptors)
    assert again["fm_1"].hashes == features["fm_1"].hashes
    with np.load(part_path(out, 0), allow_pickle=False) as stored:  # plain arrays only
        assert all(stored[name].dtype != object for name in stored.files)


def test_a_cache_part_built_from_other_rows_is_recomputed(tmp_path):
    images = _images_table(tmp_path, count=3)
    partition_features(tmp_path / "out", 0, images.slice(0, 2), max_pixels=10_000_000)
    assert sorted(partition_features(tmp_path / "out", 0, images, max_pixels=10_000_000)) == ["fm_0", "fm_1", "fm_2"]


def test_an_embeddings_matrix_holding_pickles_is_refused(tmp_path):
    path = tables.array_path(tmp_path, "embeddings", 0)
    path.parent.mkdir(parents=True)
    np.save(path, np.array([Planted(tmp_path / "executed")], dtype=object), allow_pickle=True)
    with pytest.raises(SchemaError, match="not a plain array"):
        tables.read_array(tmp_path, "embeddings", 0)
    assert not (tmp_path / "executed").exists()


# -- one finished run, damaged in turn -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def scheduler():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      host="127.0.0.1") as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def finished(tmp_path_factory, scheduler):
    """A run over ``a/pool`` started from ``a`` with the relative ``--lake pool``: (root, OUT)."""
    root = tmp_path_factory.mktemp("guarantees")
    folders = write_lake(root / "a", pool=30, curated=4, evals=2)
    out = root / "out"
    cwd = Path.cwd()
    os.chdir(root / "a")
    try:
        result = curate("run", "--lake", "pool", "--curated", "curated", "--out", out, "--scheduler", scheduler, *DEMO)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert len(tables.done_parts(out, "files")) >= 3 and len(output.names(out / "shards", "shard-*.tar")) >= 2
    return root, out, folders


@pytest.fixture
def copy(finished, tmp_path):
    """A copy of the finished run's OUT to damage."""
    _, out, folders = finished
    copied = tmp_path / "out"
    shutil.copytree(out, copied)
    return copied, folders


def rerun(out: Path, folders, scheduler, *extra):
    return curate("run", "--lake", folders["pool"], "--curated", folders["curated"], "--out", out,
                  "--scheduler", scheduler, *DEMO, *extra)


def test_every_file_a_run_writes_is_declared_by_its_stage(finished):
    """Everything in OUT is a declared output of some stage, a record of one, or the run's own bookkeeping."""
    _, out, _ = finished
    patterns = [pattern for stage in stages.ORDER for pattern in stages.output_patterns(stage)]
    bookkeeping = ["run.json", "timings.json", ".curate-lock", "manifests/*/*.json"]
    for path in out.rglob("*"):
        if path.is_file():
            name = path.relative_to(out).as_posix()
            assert any(Path(name).match(pattern) and name.count("/") == pattern.count("/")
                       for pattern in patterns + bookkeeping), name


def _damage(out: Path, case: str) -> tuple[str, str]:
    """Damage ``out``; returns the stage and unit that must be reported damaged."""
    shard = out / "shards" / "shard-000001.tar"
    if case == "truncated shard":
        shard.write_bytes(shard.read_bytes()[:-1024])
        return "shard", "shard-000001"
    if case == "overwritten shard":
        data = shard.read_bytes()
        shard.write_bytes(data[:512] + bytes(255 - b for b in data[512:1024]) + data[1024:])  # same size
        return "shard", "shard-000001"
    if case == "deleted shard":
        shard.unlink()
        return "shard", "shard-000001"
    if case == "deleted shard index":
        (out / "shards" / "index.json").unlink()
        return "shard", "index"
    if case == "deleted files part":
        tables.part_path(out, "files", 1).unlink()
        return "list", "listing"
    if case == "deleted embeddings matrix":
        tables.array_path(out, "embeddings", 1).unlink()
        return "embed", "part-00001"
    raise ValueError(case)


CASES = ["truncated shard", "overwritten shard", "deleted shard", "deleted shard index", "deleted files part",
         "deleted embeddings matrix"]
REDONE = {  # the stages a rerun must not call done, and those it must
    "truncated shard": ({"shard", "report"}, {"list", "ingest", "embed", "dedup", "cluster", "sample"}),
    "overwritten shard": ({"shard", "report"}, {"list", "ingest", "embed", "dedup", "cluster", "sample"}),
    "deleted shard": ({"shard", "report"}, {"list", "ingest", "embed", "dedup", "cluster", "sample"}),
    "deleted shard index": ({"shard", "report"}, {"list", "ingest", "embed", "dedup", "cluster", "sample"}),
    "deleted files part": ({"list", "ingest", "embed", "dedup", "cluster", "sample", "shard", "report"}, set()),
    "deleted embeddings matrix": ({"embed", "dedup", "cluster", "sample", "shard", "report"}, {"list", "ingest"}),
}


@pytest.mark.parametrize("case", CASES)
def test_status_verify_names_the_damaged_unit(copy, case):
    out, _ = copy
    stage, unit = _damage(out, case)
    result = curate("status", out, "--verify")
    assert result.exit_code == 1, result.stdout + result.stderr
    assert f"damaged: {stage} {unit}:" in result.stdout
    assert curate("status", out).exit_code == 0


def test_status_verify_of_an_intact_run_is_clean(finished):
    _, out, _ = finished
    result = curate("status", out, "--verify")
    assert result.exit_code == 0 and "damaged" not in result.stdout


@pytest.mark.parametrize("case", CASES)
def test_a_rerun_redoes_exactly_the_damaged_units_and_what_depends_on_them(finished, copy, scheduler, case):
    _, reference, _ = finished
    out, folders = copy
    _damage(out, case)
    untouched = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("shard-*.tar") if p.name != "shard-000001.tar"}
    result = rerun(out, folders, scheduler, *(["--verify"] if case == "overwritten shard" else []))
    assert result.exit_code == 0, result.stdout + result.stderr
    redone, kept = REDONE[case]
    for stage in kept:
        assert f"{stage}: done already" in result.stdout, stage
    for stage in redone - {"report"}:
        assert f"{stage}: done already" not in result.stdout, stage
    if case in ("deleted embeddings matrix", "deleted files part"):  # that partition alone
        assert "embed (1 partitions)" in result.stdout
    if case == "deleted files part":
        assert "ingest (1 partitions)" in result.stdout
    if kept >= {"sample"}:  # shards that were intact are kept as they are
        assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("shard-*.tar")
                if p.name in untouched} == untouched
    for name in output.names(reference / "shards", "*"):
        assert (out / "shards" / name).read_bytes() == (reference / "shards" / name).read_bytes(), name
    for name in ("files", "images", "embeddings", "duplicates", "selection", "shards"):  # all but when rows were written
        times = time_columns(name)
        assert tables.read_table(out, name).drop_columns(times).equals(
            tables.read_table(reference, name).drop_columns(times)), name
    assert curate("status", out, "--verify").exit_code == 0


def test_a_damaged_listing_of_a_lake_that_changed_since_redoes_every_partition_that_changed(tmp_path, scheduler):
    folders = write_lake(tmp_path, pool=20, curated=2, evals=1)
    out = tmp_path / "out"
    assert rerun(out, folders, scheduler).exit_code == 0
    tables.part_path(out, "files", 2).unlink()
    shutil.copy(folders["pool"] / "fm_0003.png", folders["pool"] / "a_new_image.png")  # every pool part shifts
    result = rerun(out, folders, scheduler)
    assert result.exit_code == 0, result.stdout + result.stderr
    listed = tables.read_table(out, "files")
    assert len(listed) == sum(1 for folder in ("pool", "curated") for _ in folders[folder].iterdir())
    assert sorted(tables.read_table(out, "images").column("key").to_pylist()) == sorted(listed.column("key").to_pylist())
    assert sorted(tables.read_table(out, "embeddings").column("key").to_pylist()) == sorted(
        row["key"] for row in tables.read_table(out, "images").to_pylist() if row["status"] == "ok")
    assert curate("status", out, "--verify").exit_code == 0


# -- only what the run wrote is removed; a stale cache is never read ---------------------------------------


@pytest.fixture(scope="module")
def repartitioned(tmp_path_factory, scheduler):
    """A 150-image lake copy-detected with partitions of 40, then rerun with 75 (user files planted in OUT)."""
    root = tmp_path_factory.mktemp("repartitioned")
    images, _ = load_fashion_mnist("train", limit=150)
    (root / "lake").mkdir()
    for i, pixels in enumerate(images.numpy()):
        Image.fromarray(pixels).save(root / "lake" / f"fm_{i:04d}.png")
    out = root / "out"
    settings = ["--config", "demo", "dedup.descriptor=local", "shard.max_samples=50", "--scheduler", scheduler]
    first = curate("run", "--lake", root / "lake", "--out", out, "ingest.partition_size=40", *settings)
    assert first.exit_code == 0, first.stdout + first.stderr
    (out / "report" / "notes.txt").write_text("mine")
    (out / "shards" / "holiday.jpg").write_bytes(b"my photo")
    (out / "tables" / "images" / "README").write_text("mine too")
    second = curate("run", "--lake", root / "lake", "--out", out, "ingest.partition_size=75", *settings)
    assert second.exit_code == 0, second.stdout + second.stderr
    return out, second


def test_a_changed_partitioning_never_reads_a_stale_copy_detection_cache(repartitioned):
    out, result = repartitioned
    assert "config changed: redoing list, ingest" in result.stdout
    assert len(tables.done_parts(out, "images")) == 2
    assert len(tables.read_table(out, "duplicates")) == 150  # dedup saw every image
    assert output.names(out / "copydetect") == ["part-00000.npz", "part-00001.npz"]


def test_a_rerun_with_a_changed_config_removes_only_what_the_run_wrote(repartitioned):
    out, _ = repartitioned
    assert (out / "report" / "notes.txt").read_text() == "mine"
    assert (out / "shards" / "holiday.jpg").read_bytes() == b"my photo"
    assert (out / "tables" / "images" / "README").read_text() == "mine too"
    assert (out / "report" / "report.json").is_file()


# -- sets are recorded by their resolved location -------------------------------------------------------------


def test_a_relative_lake_from_another_folder_is_another_run(finished, scheduler, monkeypatch, tmp_path):
    root, out, folders = finished
    other = tmp_path / "b"
    write_lake(other, pool=6, curated=2, evals=1)
    monkeypatch.chdir(other)
    result = curate("run", "--lake", "pool", "--curated", "curated", "--out", out, "--scheduler", scheduler, *DEMO)
    assert result.exit_code == 2 and "holds another run" in result.stderr
    assert json.loads((out / "run.json").read_text())["sets"][0]["uri"] == str(folders["pool"].resolve())


def test_the_absolute_path_of_the_same_lake_resumes_the_run(finished, copy, scheduler):
    out, folders = copy
    result = rerun(out, {"pool": folders["pool"].resolve(), "curated": folders["curated"].resolve()}, scheduler)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert all(f"{stage}: done already" in result.stdout for stage in stages.ORDER[:-1])


def test_a_run_recorded_with_relative_paths_is_still_read(tmp_path, monkeypatch):
    (tmp_path / "lake").mkdir()
    record = {"format": "dinolab-curate-run", "version": 1, "config": {},
              "sets": [{"uri": "lake", "role": "pool", "name": "lake"}]}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run.json").write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path)
    assert check(tmp_path / "out", [ImageSet(str(tmp_path / "lake"), "pool", "lake")]) is not None


# -- one run holds OUT ---------------------------------------------------------------------------------------


def test_a_second_lock_on_a_local_out_names_the_holder_until_it_is_released(tmp_path):
    from dinolab.pipelines.lock import LockError, OutputLock

    with OutputLock(tmp_path / "out", "curate run --out out"):
        with pytest.raises(LockError, match=rf"in use by another run \(host \S+, pid {os.getpid()}, started .*"
                                            r"command: curate run --out out\)"):
            OutputLock(tmp_path / "out", "curate run --out out").__enter__()
    with OutputLock(tmp_path / "out", "the next run"):
        assert json.loads((tmp_path / "out" / ".curate-lock").read_text())["command"] == "the next run"
