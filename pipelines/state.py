"""What a run is (``OUT/run.json``: its sets and config), whether a rerun may resume it, and its status.

A rerun with the same sets resumes; a changed config section redoes the first stage that depends on it
(:attr:`curate.stages.Stage.settings`: the ingest section is the list stage's too) and every stage after
it; other sets, or an ``OUT`` holding tables of no recorded run, are refused so nothing is written over.
Sets are recorded and compared by their resolved location (an absolute path or a full URL). A damaged
unit (a recorded output missing, truncated or overwritten: :mod:`curate.manifest`) is redone with
everything that depends on it. Only what the stages declare they write (:class:`curate.stages.Stage`) is
ever removed. ``OUT`` is a local folder or an object-store prefix (:mod:`curate.output`); ``run.json``
records the config with storage-option secrets redacted.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from dinolab.curate import listing_steps, manifest, output, stages, tables
from dinolab.curate.lakes.sets import ImageSet
from dinolab.curate.output import Location
from dinolab.schemas.config import PipelineConfig
from dinolab.schemas.tables import utc_now

RUN_FILE = listing_steps.RUN_FILE
RUN_FORMAT = "dinolab-curate-run"


class RunError(ValueError):
    """An output folder that this run must not use or resume."""


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
    if [_resolved(s) for s in run["sets"]] != [_resolved(asdict(s)) for s in sets]:
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
    changed = [stage for stage in stages.ORDER
               if any(old.get(section) != new.get(section) for section in stages.STAGES[stage].config_sections())]
    redo = list(stages.ORDER[stages.ORDER.index(changed[0]):]) if changed else []
    for stage in redo:
        stages.remove_outputs(out, stage, caches=stage != redo[0])  # a stage's caches depend on earlier stages alone
    _write(out, wanted, config, run.get("created_at"))
    return redo


def _resolved(recorded: dict) -> dict:
    """A recorded set with its location resolved: records written before locations were resolved hold
    paths relative to the folder the run was started from, read (as then) against the current one."""
    uri = recorded["uri"]
    if "://" in uri or os.path.isabs(uri):
        return recorded
    return {**recorded, "uri": str(Path(uri).expanduser().resolve())}


def damage(out: Location, deep: bool = False) -> dict[str, dict[str, dict[str, str]]]:
    """Per stage, its damaged units (:func:`curate.manifest.damaged`); ``deep`` also compares digests."""
    return {stage: found for stage in stages.ORDER if (found := manifest.damaged(out, stage, deep))}


def repair(out: Location, deep: bool = False) -> list[str]:
    """Remove every damaged unit and what depends on it so that a run redoes them; returns one line each.

    A damaged partition of a per-partition stage is redone in that stage and the per-partition stages
    after it, then every global stage; a damaged ``files`` part is listed again (the list stage compares the
    new listing with the recorded one: :func:`curate.stages.relisted`) and its partition redone; a damaged
    shard (or the shard index) is redone with the index and the report; a damaged global stage with the
    stages after it. Caches stay: each part records the rows it was built from
    (:mod:`curate.copydetect.features`).
    """
    found = damage(out, deep)
    if not found:
        return []
    redo_from = len(stages.ORDER)
    partitions: set[int] = set()
    for stage, units in found.items():
        position = stages.ORDER.index(stage)
        if stage == listing_steps.STAGE:
            lost = {tables.part_number(name) for problems in units.values() for name in problems}
            if None in lost:  # not a files part: the record itself is unreadable
                redo_from = 0
                continue
            for number in lost:
                output.remove(tables.part_path(out, "files", number))
            partitions |= lost
        if stage == listing_steps.STAGE or stages.STAGES[stage].per_partition:
            partitions |= {int(unit.split("-")[1]) for unit in units if unit.startswith("part-")}
            for later in stages.ORDER[position:]:
                if stages.STAGES[later].per_partition:
                    stages.remove_units(out, later, sorted(partitions))
            redo_from = min(redo_from, stages.ORDER.index("dedup"))
        elif stage == "shard":
            stages.remove_units(out, stage, [int(unit.split("-")[1]) for unit in units if unit.startswith("shard-")])
            for pattern in stages.STAGES[stage].files:  # the index, the shards table, a plan
                output.remove_matching(out, pattern)
            manifest.forget(out, stage, [stages.INDEX_UNIT])
            redo_from = min(redo_from, position + 1)
        else:
            redo_from = min(redo_from, position)
    for stage in stages.ORDER[redo_from:]:
        stages.remove_outputs(out, stage, caches=False)
    return [f"{stage} {unit}: {'; '.join(f'{name}: {problem}' for name, problem in problems.items())}"
            for stage, units in found.items() for unit, problems in units.items()]


def _write(out: Location, sets: list[dict], config: PipelineConfig, created_at: str | None = None) -> None:
    """Record the run; ``created_at`` (ISO 8601, UTC) is kept from the first run, ``updated_at`` is now."""
    now = utc_now().isoformat()
    record = {"format": RUN_FORMAT, "version": 1, "sets": sets, "config": config.to_dict(),
              "created_at": created_at or now, "updated_at": now}
    output.write_bytes(out / RUN_FILE, json.dumps(record, indent=1, sort_keys=True).encode())


def recorded_sets(out: Location) -> list[ImageSet]:
    run = read_run(out)
    if run is None:
        raise RunError(f"{out} holds no curate run ({RUN_FILE} missing): give --lake to start one")
    return [ImageSet(**s) for s in run["sets"]]


def status(out: Location, deep: bool = False) -> list[dict]:
    """Per stage: ``done``, ``partial`` (with partitions done / total), ``pending`` or ``damaged`` (with the
    damaged units; missing files and sizes always, digests with ``deep``)."""
    rows = []
    total = len(stages.partitions(out))
    found = damage(out, deep)
    for name in stages.ORDER:
        stage = stages.STAGES[name]
        if name in found:
            state, detail = "damaged", ", ".join(sorted(found[name]))
        elif stages.is_done(out, name):
            state, detail = "done", ""
        elif stage.per_partition and total:
            done = total - len(stages.pending(out, name))
            state, detail = ("partial" if done else "pending"), f"{done}/{total} partitions"
        else:
            state, detail = "pending", ""
        rows.append({"stage": name, "state": state, "detail": detail,
                     "problems": [f"{unit}: {path}: {problem}" for unit, problems in found.get(name, {}).items()
                                  for path, problem in problems.items()]})
    return rows
