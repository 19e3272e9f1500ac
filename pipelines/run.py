"""``run_curation``: the one entry that runs the curation stages over an output folder, on any executor.

It takes ``OUT``'s lock, records the run (a changed config redoes its stage and what follows; damaged
outputs are removed to be redone), lists the lake, then runs each stage up to ``until`` through the one
dispatcher (:mod:`pipelines.dispatch`), skipping stages that are done and recording the seconds each took
in ``OUT/timings.json``. The CLI, the demo and the benchmarks all call it::

    records = run_curation(out, sets, config, dask_executor(console, workers=2), console)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import pyarrow as pa
from rich.console import Console

from dinolab.curate import output, stages, tables
from dinolab.curate.lakes.sets import ImageSet, files_table
from dinolab.curate.lakes import listing as lake_listing
from dinolab.curate.output import Location
from dinolab.pipelines.dispatch import Executor, run_stage
from dinolab.pipelines.listing_tasks import list_lake
from dinolab.pipelines.lock import OutputLock
from dinolab.pipelines.state import prepare, relisted, repair
from dinolab.schemas.config import PipelineConfig

TIMINGS_FILE = stages.TIMINGS_FILE


def write_listing(out: Location, sets: list[ImageSet], config: PipelineConfig, listing: pa.Table | None = None,
                  executor: Executor | None = None) -> int:
    """The ``files`` table (``listing``, or listed now), one part per partition, unless it exists whole.

    A listing whose recorded parts are not all there (a damaged part was removed) is listed again: the
    partitions whose part changed are redone (:func:`pipelines.state.relisted`).

    Local folder sets are listed here; any other set (URLs, tar files, parquet files) is listed by tasks
    of ``executor`` (:mod:`pipelines.listing_tasks`). Returns the number of partitions.
    """
    done = tables.done_parts(out, "files")
    before = stages.listing_record(out) if done else None  # a listing with damaged parts is listed again
    if done and not lake_listing.in_progress(out) and {stages.part_number(name) for name in before or {}} <= done:
        return len(done)
    if listing is None and not all(lake_listing.listed_by_client(image_set) for image_set in sets):
        if executor is None:
            raise ValueError("listing URLs, tar or parquet lakes needs an executor to run its tasks")
        count = list_lake(executor, out, sets, config)
        relisted(out, before)
        return count
    if listing is None:
        listing = files_table(sets, config.ingest.partition_size, config.ingest.follow_links)
    partition = listing.column("partition").to_numpy()
    parts = sorted(set(partition.tolist()))
    for number in parts:
        tables.write_part(out, "files", number, listing.filter(partition == number))
    relisted(out, before)
    return len(parts)


def run_curation(out: Location, sets: list[ImageSet], config: PipelineConfig,
                 executor: AbstractContextManager[Executor], console: Console, until: str = "report",
                 holder: str = "curate", listing: pa.Table | None = None, verify: bool = False,
                 after_stage: Callable[[str], None] | None = None) -> list[dict]:
    """Run every stage up to ``until`` over ``out`` holding its lock (``holder`` names this run to another
    one); returns one record per stage (images in/out, seconds, tasks). ``executor`` is entered once the
    lock is held (a cluster starts only for a run that may write ``OUT``):
    :func:`pipelines.dispatch.dask_executor`, or ``nullcontext(LoopExecutor())``.

    ``listing`` is the ``files`` table when the caller listed the lake already; ``verify`` also compares
    the digests of the recorded outputs; ``after_stage(name)`` is called when a stage is complete.
    """
    with OutputLock(out, holder), executor as running:
        redo = prepare(out, sets, config)
        if redo:
            console.print(f"config changed: redoing {', '.join(redo)}", highlight=False)
        for line in repair(out, deep=verify):
            console.print(f"damaged, redoing it and what depends on it: {line}", highlight=False)
        names = stages.ORDER[: stages.ORDER.index(until) + 1]
        for name in names:
            start = time.perf_counter()
            if name == "ingest":
                write_listing(out, sets, config, listing, running)
            ran = _run(running, out, config, stages.STAGES[name], console)
            if ran:
                _record_time(out, name, time.perf_counter() - start, ran)
            if after_stage is not None:
                after_stage(name)
        return stages.stage_records(out, names)


def _run(executor: Executor, out: Location, config: PipelineConfig, stage: stages.Stage, console: Console) -> int:
    """Run what is left of ``stage``; returns the number of tasks run (0: already done)."""
    if stage.name != "report" and stages.is_done(out, stage.name):  # the report is always written again
        console.print(f"{stage.name}: done already, skipped", highlight=False)
        return 0
    if stage.announce is not None and (line := stage.announce(out, config)):
        console.print(line, highlight=False)
    return run_stage(executor, out, config, stage)


def _record_time(out: Location, name: str, seconds: float, task_count: int) -> None:
    timings = stages.timings(out)
    timings[name] = {"seconds": round(seconds, 3), "tasks": task_count}
    output.write_bytes(output.join(out, TIMINGS_FILE), json.dumps(timings, indent=1, sort_keys=True).encode())
