"""The copy-detection dedup as steps (curate/copydetect/steps.py) against the single-task copy_duplicates_table."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from distributed import Client, LocalCluster
from PIL import Image, ImageOps
from rich.console import Console

from dinolab.curate import stages, tables
from dinolab.curate.copydetect import steps
from dinolab.curate.copydetect.stage import copy_dedup
from dinolab.curate.lakes.sets import ImageSet
from dinolab.pipelines.dispatch import DaskExecutor, LoopExecutor, run_stage
from dinolab.pipelines.state import prepare
from dinolab.schemas.config import DedupConfig, IngestConfig, PipelineConfig


def _photo(name: str, size: int = 256) -> Image.Image:
    import skimage.data

    return ImageOps.fit(Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB"), (size, size))


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> tuple[Path, Path]:
    """Photos, their copies (resized, flipped crop, grey, a byte copy) and an evaluation set holding one of them."""
    root = tmp_path_factory.mktemp("copylake")
    pool, evaluation = root / "pool", root / "eval"
    pool.mkdir(), evaluation.mkdir()
    astronaut, coffee, chelsea, rocket, camera = (_photo(n) for n in ("astronaut", "coffee", "chelsea", "rocket",
                                                                        "camera"))
    images = {
        "a1": astronaut, "a2": astronaut.resize((128, 128)), "a3": ImageOps.mirror(astronaut.crop((0, 0, 200, 200))),
        "c1": coffee, "c2": coffee.rotate(180), "k1": chelsea.crop((20, 20, 236, 236)),
        "k2": ImageOps.grayscale(chelsea.crop((20, 20, 236, 236))).convert("RGB"), "r1": rocket, "m1": camera,
    }
    for name, image in images.items():
        image.save(pool / f"{name}.png")
    shutil.copy(pool / "c1.png", pool / "c0.png")  # a byte copy: exact
    chelsea.save(evaluation / "chelsea.png")
    return pool, evaluation


def _config(partition_size: int, **dedup) -> PipelineConfig:
    return PipelineConfig(ingest=IngestConfig(partition_size=partition_size), dedup=DedupConfig(**dedup))


def _ingested(lake: tuple[Path, Path], out: Path, config: PipelineConfig) -> Path:
    pool, evaluation = lake
    sets = [ImageSet(str(pool), "pool", "pool"), ImageSet(str(evaluation), "eval", "test")]
    prepare(out, sets, config)
    for name in ("list", "ingest"):
        run_stage(LoopExecutor(), out, config, stages.STAGES[name])
    return out


def _rows(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda row: row["key"])


def _reference(out: Path, copied: Path, config: PipelineConfig) -> list[dict]:
    shutil.copytree(out, copied)
    copy_dedup(copied, config, "local")
    return _rows(tables.read_table(copied, "duplicates"))


@pytest.fixture(scope="module")
def scheduler():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      host="127.0.0.1") as cluster:
        yield cluster.scheduler_address


@pytest.mark.parametrize("partition_size", [100, 3])
@pytest.mark.parametrize("executor", ["loop", "dask"])
def test_the_stepped_stage_gives_the_single_task_table(lake, tmp_path, partition_size, executor, request):
    config = _config(partition_size)
    out = _ingested(lake, tmp_path / "out", config)
    reference = _reference(out, tmp_path / "reference", config)
    if executor == "loop":
        ran = run_stage(LoopExecutor(), out, config, stages.STAGES["dedup"])
    else:
        with Client(request.getfixturevalue("scheduler")) as client:
            ran = run_stage(DaskExecutor(client, Console(quiet=True)), out, config, stages.STAGES["dedup"])
    mine = _rows(tables.read_table(out, "duplicates"))
    assert mine == reference
    reasons = {row["reason"] for row in reference}
    assert {None, "exact", "near", "copy", "leak:test"} <= reasons  # the lake covers every rule
    parts = sorted(tables.done_parts(out, "images"))
    assert sorted(tables.done_parts(out, "duplicates")) == parts and (len(parts) > 3) == (partition_size == 3)
    assert ran > len(steps.STEPS) and stages.is_done(out, "dedup") and not (out / "work").exists()


def test_an_interrupted_stage_resumes_without_redoing_its_done_units(lake, tmp_path):
    config = _config(4)
    found, ran = [], {}
    for name in ("full", "resumed"):
        out = _ingested(lake, tmp_path / name, config)
        if name == "resumed":  # interrupted after the blocks, then run again: the done units are not redone
            ran["partial"] = run_stage(LoopExecutor(), out, config,
                                       replace(stages.STAGES["dedup"], steps=stages.COPY_STEPS[:10]))
        ran[name] = run_stage(LoopExecutor(), out, config, stages.STAGES["dedup"])
        found.append(_rows(tables.read_table(out, "duplicates")))
    assert ran["partial"] > 10 and ran["partial"] + ran["resumed"] == ran["full"] and found[0] == found[1]


def test_a_template_sample_smaller_than_the_pool_still_runs(lake, tmp_path):
    config = _config(4, vlad_sample=4)
    out = _ingested(lake, tmp_path / "out", config)
    run_stage(LoopExecutor(), out, config, stages.STAGES["dedup"])
    rows = {row["key"]: row for row in tables.read_table(out, "duplicates").to_pylist()}
    assert len(rows) == 10 and sum(row["kept"] for row in rows.values()) < 10


def test_every_task_reads_the_features_of_at_most_two_partitions(lake, tmp_path, monkeypatch):
    config = _config(2)
    out = _ingested(lake, tmp_path / "out", config)
    current, read = [None], []
    features, run = steps._features, steps._Run.__call__

    def tracked(self, out, config, unit, previous, shared=None):
        current[0] = (self.name, unit)
        return run(self, out, config, unit, previous, shared)

    monkeypatch.setattr(steps._Run, "__call__", tracked)
    monkeypatch.setattr(steps, "_features", lambda out, config, part: read.append((current[0], part))
                        or features(out, config, part))
    run_stage(LoopExecutor(), out, config, stages.STAGES["dedup"])
    by_task: dict[tuple, set[int]] = {}
    for task, part in read:
        by_task.setdefault(task, set()).add(part)
    names = {task[0] for task in by_task}
    assert len(tables.done_parts(out, "images")) >= 5
    assert {"block", "verify", "leaks", "flags"} <= names
    for (name, unit), parts in by_task.items():
        limit = {"block": 2, "verify": 2, "leaks": 2, "templates": 99, "vocabulary": 99}.get(name, 1)
        assert len(parts) <= limit, (name, unit, parts)
    assert any(len(parts) == 2 for (name, _), parts in by_task.items() if name == "verify")


@pytest.mark.parametrize("partition_size", [100, 3])
def test_the_checkpoint_rule_as_steps_gives_the_single_task_table(lake, tmp_path, partition_size):
    import torch

    from dinolab.curate.copydetect.descriptor import SSCD

    torch.manual_seed(0)
    checkpoint = tmp_path / "sscd.pt"
    torch.save({"model": SSCD("resnet18", dim=32).backbone.state_dict(), "arch": "resnet18"}, checkpoint)
    config = _config(partition_size, descriptor=str(checkpoint), whitening=6, threshold=0.3, eval_threshold=0.3,
                     candidates=1, global_candidates=0)  # few vote candidates: the descriptor's kNN adds some
    out = _ingested(lake, tmp_path / "out", config)
    shutil.copytree(out, tmp_path / "reference")
    copy_dedup(tmp_path / "reference", config, str(checkpoint))
    run_stage(LoopExecutor(), out, config, stages.STAGES["dedup"])
    assert _rows(tables.read_table(out, "duplicates")) == _rows(tables.read_table(tmp_path / "reference", "duplicates"))
