"""``curate run`` end to end on a LocalCluster: tables, shards read by webdataset and wids, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import webdataset as wds
import wids
from typer.testing import CliRunner

from dinolab.curate import stages, tables
from lakes import write_lake
from dinolab.pipelines.cli import app

runner = CliRunner()
DEMO = ["--config", "demo", "ingest.partition_size=40", "shard.max_samples=30"]


def curate(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    folders = write_lake(root)
    out = root / "out"
    result = curate("run", "--lake", folders["pool"], "--curated", folders["curated"], "--eval", folders["eval"],
                    "--out", out, "--workers", 2, *DEMO)
    assert result.exit_code == 0, result.stdout + result.stderr
    return folders, out, result


def test_every_stage_writes_its_validated_table(finished_run):
    folders, out, result = finished_run
    images = tables.read_table(out, "images").to_pylist()
    assert len(images) == len(list(folders["pool"].iterdir())) + 12 + 4
    by_name = {Path(row["uri"]).name: row for row in images}
    assert by_name["broken.jpg"]["status"] == "error" and by_name["broken.jpg"]["error"]
    assert by_name["empty.png"]["status"] == "error" and by_name["empty.png"]["error"] == "empty file"
    assert by_name["astronaut.jpg"]["width"] == 512 and by_name["astronaut.jpg"]["format"] == "JPEG"
    assert all(row["status"] == "ok" for name, row in by_name.items() if name not in ("broken.jpg", "empty.png"))
    duplicates = {Path(row["uri"]).name: row for row in tables.read_table(out, "duplicates").to_pylist()}
    pair = duplicates["fm_0001.png"], duplicates["mirror_of_fm_0001.png"]
    assert pair[0]["group"] == pair[1]["group"] and sorted(r["kept"] for r in pair) == [False, True]
    assert {r["reason"] for r in pair} == {None, "exact"}
    for name, row in duplicates.items():
        if name.startswith("web_"):  # the evaluation images planted in the pool
            assert not row["kept"] and row["reason"] == "leak:eval", name
    kept = {row["key"] for row in duplicates.values() if row["kept"]}
    assert {row["key"] for row in tables.read_table(out, "clusters").to_pylist()} == kept
    selection = tables.read_table(out, "selection").to_pylist()
    assert selection and {row["key"] for row in selection} <= kept
    assert all(row["method"] == "retrieval:neighbours" and row["query_key"].startswith("curated-") for row in selection)
    for line in stages.ORDER:
        assert line in result.stdout
    assert "\r" not in result.stdout and "ingest (6 partitions): 6/6 tasks" in result.stdout  # log-friendly
    assert len(result.stdout.splitlines()) < 80


def test_shards_hold_the_original_bytes_for_webdataset_and_wids(finished_run, tmp_path):
    _, out, _ = finished_run
    selection = {row["key"]: row for row in tables.read_table(out, "selection").to_pylist()}
    index = json.loads((out / "shards" / "index.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1" and len(index["shardlist"]) >= 2  # 30 samples a shard
    urls = [str(out / "shards" / shard["url"]) for shard in index["shardlist"]]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        image_ext = next(key for key in sample if key not in ("__key__", "__url__", "__local_path__", "json"))
        seen[sample["__key__"]] = (sample[image_ext], json.loads(sample["json"]))
    assert sorted(seen) == sorted(selection)
    for key, (data, meta) in seen.items():
        assert data == Path(selection[key]["uri"]).read_bytes()
        assert meta["uri"] == selection[key]["uri"] and meta["query_key"] == selection[key]["query_key"]
    dataset = wids.ShardListDataset(str(out / "shards" / "index.json"), cache_dir=str(tmp_path), transformations=[])
    assert len(dataset) == len(selection)
    for position in (0, len(dataset) - 1):
        sample = dataset[position]
        image = next(value for key, value in sample.items() if key.startswith(".") and key != ".json")
        assert image.getvalue() == Path(selection[sample["__key__"]]["uri"]).read_bytes()
    rows = tables.read_table(out, "shards").to_pylist()
    assert sorted(row["key"] for row in rows) == sorted(selection)


def test_report_and_status(finished_run):
    _, out, _ = finished_run
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["duplicates"]["by_reason"] == {"exact": 1, "leak:eval": 4}
    assert report["unreadable"]["total"] == 2
    assert "broken.jpg" in (out / "report" / "report.html").read_text()
    result = curate("status", out)
    assert result.exit_code == 0 and result.stdout.count("done") == len(stages.ORDER)


def test_rerun_skips_every_stage_and_keeps_the_shards(finished_run):
    folders, out, _ = finished_run
    before = {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")}
    result = curate("run", "--lake", folders["pool"], "--curated", folders["curated"], "--eval", folders["eval"],
                    "--out", out, "--workers", 1, *DEMO)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("done already") == len(stages.ORDER) - 1  # all but the report, which is refreshed
    assert {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")} == before


def test_a_changed_setting_redoes_its_stage_and_the_ones_after(finished_run, tmp_path):
    folders, out, _ = finished_run
    profile = tmp_path / "dask-report.html"
    result = curate("sample", "--out", out, *DEMO, "sample.per_query=2", "--performance-report", profile)
    assert result.exit_code == 0, result.stderr
    assert "redoing sample, shard, report" in result.stdout
    assert profile.read_text().lstrip().lower().startswith("<!doctype html")
    assert not (out / "tables" / "shards").exists() and not (out / "shards").exists()
    assert len(tables.read_table(out, "selection")) < 12 * 8
    assert curate("run", "--out", out, *DEMO).exit_code == 0  # back to the first settings for the other tests


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--lake", "{tmp}/missing"], "no such folder"),
        (["--lake", "{tmp}/empty"], "no image files found"),
        (["--lake", "{pool}", "dedup.nonsense=1"], "unknown config key dedup.nonsense"),
        (["--lake", "{pool}", "dedup.k=many"], "expected an integer"),
        (["--lake", "{pool}", "--config", "{tmp}/nope.yaml"], "no config"),
        (["--lake", "{pool}", "--scheduler", "tcp://127.0.0.1:9"], "cannot reach the Dask scheduler"),
        (["--lake", "{pool}", "--out", "{other}"], "holds another run"),
        (["--curated", "{pool}"], "need a --lake"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(finished_run, tmp_path, arguments, message):
    folders, other, _ = finished_run
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    fill = {"tmp": tmp_path, "pool": folders["curated"], "other": other}
    arguments = [a.format(**fill) for a in arguments]
    if "--out" not in arguments:
        arguments += ["--out", str(tmp_path / "out")]
    before = sorted(p.name for p in other.rglob("*"))
    result = curate("run", *arguments)
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert sorted(p.name for p in other.rglob("*")) == before  # nothing written over


def test_a_curated_set_with_no_readable_image_is_refused(tmp_path):
    folders = write_lake(tmp_path, pool=20, curated=0, evals=0)
    (folders["curated"] / "bad.png").write_bytes(b"\x89PNG garbage")
    result = curate("run", "--lake", folders["pool"], "--curated", folders["curated"], "--out", tmp_path / "out",
                    "--workers", 1, *DEMO)
    assert result.exit_code == 2
    assert "none of its images could be read" in result.stderr
