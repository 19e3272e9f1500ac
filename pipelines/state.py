"""What a run is (``OUT/run.json``: its sets and config), whether a rerun may resume it, and its status.

A rerun with the same sets resumes; a changed config section redoes its stage and every stage after
it; other sets, or an ``OUT`` holding tables of no recorded run, are refused so nothing is written over.
``OUT`` is a local folder or an object-store prefix (:mod:`curate.output`); ``run.json`` records the
config with storage-option secrets redacted.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from curate import knn_dedup, output, stages, tables
from curate.lake import ImageSet
from curate.output import Location
from schemas.config import PipelineConfig

RUN_FILE = "run.json"
RUN_FORMAT = "dinolab-curate-run"


class RunError(ValueError):
    """An output folder that this run must not use or resume."""


def stage_paths(out: Location, stage: str) -> list[Location]:
    """Everything a stage writes (the ingest stage also owns the lake listing)."""
    if stage == "report":
        return [out / "report"]
    paths = [tables.table_dir(out, stages.STAGES[stage].writes)]
    if stage == "ingest":
        paths.append(tables.table_dir(out, "files"))
    if stage == "dedup":
        paths.append(output.join(out, *knn_dedup.WORK.split("/")))
    if stage == "shard":
        paths.append(out / stages.SHARD_DIR)
    return paths


def read_run(out: Location) -> dict | None:
    path = out / RUN_FILE
    if not output.is_file(path):
        return None
    try:
        run = json.loads(output.read_bytes(path))
    except json.JSONDecodeError:
        raise RunError(f"{path}: not a readable run record") from None
    if run.get("format") != RUN_FORMAT:
        raise RunError(f"{path}: not a curate run record")
    return run


def check(out: Location, sets: list[ImageSet]) -> dict | None:
    """The run recorded in ``OUT`` if it has these sets (``None`` if none); :class:`RunError` otherwise."""
    if output.is_file(out):
        raise RunError(f"{out} is a file, not an output folder")
    run = read_run(out)
    if run is None:
        if output.exists(out / "tables"):
            raise RunError(f"{out} holds tables of another run (no {RUN_FILE}); choose a new --out")
        return None
    if run["sets"] != [asdict(s) for s in sets]:
        described = ", ".join(f"{s['role']} {s['uri']}" for s in run["sets"])
        raise RunError(f"{out} holds another run (its sets: {described}); choose a new --out")
    return run


def prepare(out: Location, sets: list[ImageSet], config: PipelineConfig) -> list[str]:
    """Record the run in ``OUT`` (after :func:`check`); returns the stages a changed config makes it redo."""
    run = check(out, sets)
    wanted = [asdict(s) for s in sets]
    if run is None:
        output.makedirs(out)
        _write(out, wanted, config)
        return []
    old = run["config"]
    new = json.loads(json.dumps(config.to_dict()))  # as recorded: tuples become lists
    changed = [stage for stage in stages.ORDER if old.get(stage) != new.get(stage)]
    redo = list(stages.ORDER[stages.ORDER.index(changed[0]):]) if changed else []
    for stage in redo:
        for path in stage_paths(out, stage):
            output.remove_tree(path)
    _write(out, wanted, config)
    return redo


def _write(out: Location, sets: list[dict], config: PipelineConfig) -> None:
    record = {"format": RUN_FORMAT, "version": 1, "sets": sets, "config": config.to_dict()}
    output.write_bytes(out / RUN_FILE, json.dumps(record, indent=1, sort_keys=True).encode())


def recorded_sets(out: Location) -> list[ImageSet]:
    run = read_run(out)
    if run is None:
        raise RunError(f"{out} holds no curate run ({RUN_FILE} missing): give --lake to start one")
    return [ImageSet(**s) for s in run["sets"]]


def status(out: Location) -> list[dict]:
    """Per stage: ``done``, ``partial`` (with partitions done / total) or ``pending``."""
    rows = []
    total = len(stages.partitions(out))
    for name in stages.ORDER:
        stage = stages.STAGES[name]
        if stages.is_done(out, name):
            state, detail = "done", ""
        elif stage.per_partition and total:
            done = total - len(stages.pending(out, name))
            state, detail = ("partial" if done else "pending"), f"{done}/{total} partitions"
        else:
            state, detail = "pending", ""
        rows.append({"stage": name, "state": state, "detail": detail})
    return rows
