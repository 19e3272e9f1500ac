"""``run_curation``: the one entry that runs the curation stages over an output folder, on any executor.

It takes ``OUT``'s lock, records the run (a changed config redoes its stage and what follows; damaged
outputs are removed to be redone), then runs each stage up to ``until`` — the lake listing first — through
the one dispatcher (:mod:`pipelines.dispatch`), skipping stages that are done and recording the seconds each
took in ``OUT/timings.json``. The CLI, the demo and the benchmarks all call it::

    records = run_curation(out, sets, config, dask_executor(console, workers=2), console)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import pyarrow as pa
from rich.console import Console

from dinolab.curate import listing_steps, output, stages
from dinolab.curate.lakes.sets import ImageSet
from dinolab.curate.output import Location
from dinolab.pipelines.dispatch import Executor, run_stage
from dinolab.pipelines.lock import OutputLock
from dinolab.pipelines.state import prepare, repair
from dinolab.schemas.config import PipelineConfig

TIMINGS_FILE = stages.TIMINGS_FILE


def run_curation(out: Location, sets: list[ImageSet], config: PipelineConfig,
                 executor: AbstractContextManager[Executor], console: Console, until: str = "report",
                 holder: str = "curate", listing: pa.Table | None = None, verify: bool = False,
                 after_stage: Callable[[str], None] | None = None) -> list[dict]:
    """Run every stage up to ``until`` over ``out`` holding its lock (``holder`` names this run to another
    one); returns one record per stage (images in/out, seconds, tasks). ``executor`` is entered once the
    lock is held (a cluster starts only for a run that may write ``OUT``):
    :func:`pipelines.dispatch.dask_executor`, or ``nullcontext(LoopExecutor())``.

    ``listing`` is the ``files`` table when the caller listed the lake already: the list stage publishes it
    (:func:`curate.listing_steps.provide`) unless the listing is complete. ``verify`` also compares the
    digests of the recorded outputs; ``after_stage(name)`` is called when a stage is complete.
    """
    with OutputLock(out, holder), executor as running:
        redo = prepare(out, sets, config)
        if redo:
            console.print(f"config changed: redoing {', '.join(redo)}", highlight=False)
        for line in repair(out, deep=verify):
            console.print(f"damaged, redoing it and what depends on it: {line}", highlight=False)
        if listing is not None:
            listing_steps.provide(out, listing)
        names = stages.ORDER[: stages.ORDER.index(until) + 1]
        for name in names:
            start = time.perf_counter()
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
