"""One dispatcher: any stage's declared steps (:mod:`curate.steps`) run as tasks of an executor.

For each step the dispatcher finds its units, leaves out those its ``done`` says exist, runs the others
through the executor (all the units of a step at once, the steps in order) and hands their results, in
unit order, to the next step. A step that ``joins`` the one before (a reduce whose units follow from the
map's units) is sent together with it, its tasks waiting on the map's: a map/reduce round costs one round
trip between this process and the workers, not two. Executors know nothing of stages: :class:`DaskExecutor`
submits one task per unit to a Dask client (a task rescheduled after a worker died writes the same files),
:class:`LoopExecutor` calls them in this process, one after the other::

    executor = DaskExecutor(client, console)
    run_stage(executor, out, config, stages.STAGES["shard"])   # plan, then one task per shard, then the index
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from distributed import Client, get_worker, performance_report
from distributed.diagnostics.plugin import WorkerPlugin
from rich.console import Console

from dinolab.curate.output import Location
from dinolab.curate.stages import Stage, partition_units
from dinolab.curate.steps import Repeat, Shape, Step
from dinolab.pipelines.cluster import connect
from dinolab.pipelines.paused import PauseWatch, WorkersPaused
from dinolab.pipelines.progress import track
from dinolab.schemas.config import PipelineConfig, SlurmConfig

TASK_RETRIES = 1
"""Retries of a task that raised (a worker that died is rescheduled by the scheduler on its own)."""


@dataclass(frozen=True)
class Batch:
    """One step's calls for :meth:`Executor.map`: ``function(*arguments)`` for each tuple of ``calls``."""

    label: str
    function: Callable
    calls: Sequence[tuple]
    resources: dict | None = None


class Executor(Protocol):
    """Runs ``function(*arguments)`` for each tuple of ``calls``; the results in the order of ``calls``. ``quiet``:
    no progress shown on ``console``."""

    console: Console

    def map(self, label: str, function: Callable, calls: Sequence[tuple], resources: dict | None = None,
            quiet: bool = False) -> list: ...

    def map_joined(self, first: Batch, then: Callable[[list], Batch], quiet: bool = False) -> tuple[list, list]:
        """``first``'s calls, then the calls ``then(results of first)`` builds: with Dask both are sent at once,
        the second's tasks waiting on the first's (their results stay futures until a worker needs them)."""
        ...

    def shared(self, step: Step, config: PipelineConfig) -> Callable:
        """``step.run`` with what its ``shared`` builds once per process passed as ``shared=``."""
        ...


def _load_stage_code() -> None:
    import matplotlib.backends.backend_agg  # noqa: F401  (the report's histogram: ~0.5 s to import)
    import matplotlib.figure  # noqa: F401
    import torch

    import dinolab.curate.report  # noqa: F401
    import dinolab.curate.stages  # noqa: F401  (torch, faiss and pyarrow come with it)

    torch.set_num_threads(1)  # one thread per worker process, as Dask's nanny sets for the other pools


class SharedPlugin(WorkerPlugin):
    """Builds ``factory(config)`` once when a worker starts (or when registered), for the tasks it runs."""

    def __init__(self, factory: Callable[[PipelineConfig], Any], config: PipelineConfig) -> None:
        self.factory, self.config, self.value = factory, config, None

    def setup(self, worker) -> None:
        self.value = self.factory(self.config)

    def teardown(self, worker) -> None:
        self.value = None


def _with_plugin(name: str, run: Callable, *arguments) -> dict:
    return run(*arguments, shared=get_worker().plugins[name].value)


class DaskExecutor:
    """One task per call on ``client``'s workers; progress on ``console``."""

    def __init__(self, client: Client, console: Console) -> None:
        self.client, self.console = client, console
        self.run_id = uuid.uuid4().hex[:8]
        self.numbers = itertools.count()  # a task's key must be unique: Dask runs one task per key
        client.run(_load_stage_code)  # part of starting the workers, not of the first stage's time

    def submit(self, label: str, function: Callable, *arguments, resources: dict | None = None):
        return self.client.submit(function, *arguments, key=self._key(label), pure=False, retries=TASK_RETRIES,
                                  resources=self._available(resources))

    def _key(self, label: str) -> str:
        slug = re.sub(r"[^\w-]+", "-", label).strip("-")
        return f"{slug}-{self.run_id}-{next(self.numbers)}"

    def map(self, label: str, function: Callable, calls: Sequence[tuple], resources: dict | None = None,
            quiet: bool = False) -> list:
        return self._wait([(label, self._submit_all(label, function, calls, resources))], quiet)

    def map_joined(self, first: Batch, then: Callable[[list], Batch], quiet: bool = False) -> tuple[list, list]:
        futures = self._submit_all(first.label, first.function, first.calls, first.resources)
        second = then(futures)  # a map's futures as its reduce's arguments: no round trip through this process
        joined = self._submit_all(second.label, second.function, second.calls, second.resources)
        results = self._wait([(first.label, futures), (second.label, joined)], quiet)
        return results[:len(futures)], results[len(futures):]

    def _wait(self, batches: Sequence[tuple[str, list]], quiet: bool) -> list:
        """The results of every future of ``batches`` (``(label, futures)`` pairs), in order, with a progress bar per
        batch unless ``quiet``. The first task that failed raises here; workers paused for good raise
        :class:`WorkersPaused`."""
        futures = [future for _, batch in batches for future in batch]
        with PauseWatch(self.client, futures, batches[0][0]) as watch:
            try:
                if not quiet:
                    for label, batch in batches:
                        for future in track(batch, label, self.console):
                            future.result()
                return self.client.gather(futures)
            except CancelledError:
                if watch.error:
                    raise WorkersPaused(watch.error) from None
                raise

    def _submit_all(self, label: str, function: Callable, calls: Sequence[tuple], resources: dict | None) -> list:
        """One task per call, submitted in one message to the scheduler (each step is a barrier: its latency counts)."""
        keys = [self._key(label) for _ in calls]
        columns = [list(column) for column in zip(*calls)] if calls else []
        return self.client.map(function, *columns, key=keys, pure=False, retries=TASK_RETRIES,
                               resources=self._available(resources))

    def shared(self, step: Step, config: PipelineConfig) -> Callable:
        name = f"dinolab-shared-{step.name}"
        self.client.register_plugin(SharedPlugin(step.shared, config), name=name)
        return partial(_with_plugin, name, step.run)

    def _available(self, resources: dict | None) -> dict | None:
        """``resources`` when some worker advertises them all (``--resources GPU=1``), else none asked."""
        if not resources:
            return None
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {}).values()
        return dict(resources) if any(set(resources) <= set(w.get("resources", {})) for w in workers) else None


@contextmanager
def dask_executor(console: Console, scheduler: str | None = None, workers: int | None = None,
                  memory_limit: str | None = None, cluster: str = "local", slurm: SlurmConfig | None = None,
                  report_file: Path | None = None) -> Iterator[DaskExecutor]:
    """A :class:`DaskExecutor` on a cluster (:func:`pipelines.cluster.connect`), closed on exit; ``report_file``:
    Dask's HTML performance report of what ran."""
    with (connect(scheduler, workers, memory_limit, cluster=cluster, slurm=slurm) as client,
          performance_report(filename=str(report_file)) if report_file else nullcontext()):
        if client.dashboard_link and "None" not in client.dashboard_link:
            console.print(f"dask dashboard: {client.dashboard_link}", highlight=False)
        yield DaskExecutor(client, console)


class LoopExecutor:
    """Every call in this process, in order (what one worker does, without Dask)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(quiet=True)

    def map(self, label: str, function: Callable, calls: Sequence[tuple], resources: dict | None = None,
            quiet: bool = False) -> list:
        return [function(*arguments) for arguments in calls]

    def map_joined(self, first: Batch, then: Callable[[list], Batch], quiet: bool = False) -> tuple[list, list]:
        results = self.map(first.label, first.function, first.calls, first.resources, quiet)
        second = then(results)
        return results, self.map(second.label, second.function, second.calls, second.resources, quiet)

    def shared(self, step: Step, config: PipelineConfig) -> Callable:
        value = step.shared(config)
        return partial(step.run, shared=value)


def run_stage(executor: Executor, out: Location, config: PipelineConfig, stage: Stage) -> int:
    """Run what is left of ``stage``'s steps; returns the number of units run."""
    return _run_shape(executor, out, config, stage, stage.steps, [])[1]


ROUND_LINES_EVERY = 30.0
"""Seconds between two progress lines of a ``Repeat``'s rounds (rounds that ran something)."""


def _run_shape(executor: Executor, out: Location, config: PipelineConfig, stage: Stage, shape: Shape,
               previous: list, quiet: bool = False) -> tuple[list, int]:
    """Run ``shape``; the steps of a ``Repeat`` show no progress bars of their own (twenty Lloyd rounds of
    four steps would fill a log): a line every :data:`ROUND_LINES_EVERY` seconds says which round is done,
    and one line when the rounds end."""
    ran, items = 0, list(shape)
    while items:
        item = items.pop(0)
        if isinstance(item, Repeat):
            names = ", ".join(step.name for step in item.steps if isinstance(step, Step))
            iterations, times, last_line = 0, item.times(config), time.monotonic()
            for _ in range(times):
                previous, count = _run_shape(executor, out, config, stage, item.steps, previous, quiet=True)
                ran, iterations = ran + count, iterations + 1
                if item.until is not None and item.until(previous):
                    break
                if not quiet and count and iterations < times and time.monotonic() - last_line >= ROUND_LINES_EVERY:
                    executor.console.print(f"{stage.name}: round {iterations} of at most {times} done ({names})",
                                           highlight=False)
                    last_line = time.monotonic()
            if not quiet and iterations:
                executor.console.print(f"{stage.name}: {iterations} rounds of {names}", highlight=False)
            continue
        if items and isinstance(items[0], Step) and items[0].joins is not None:
            previous, count = _run_joined(executor, out, config, stage, item, items.pop(0), previous, quiet)
        else:
            previous, count = _run_step(executor, out, config, stage, item, previous, quiet)
        ran += count
    return previous, ran


def _plan(out: Location, config: PipelineConfig, step: Step, units: list) -> tuple[dict, list]:
    """The results of ``units`` whose outputs exist (``step.done``), and the units left to run."""
    found = dict(step.done(out, config, units)) if step.done is not None else {}
    return found, [unit for unit in units if unit not in found]


def _batch(executor: Executor, out: Location, config: PipelineConfig, stage: Stage, step: Step, units: list,
           todo: list, previous: list) -> Batch:
    label = stage.name if step.name == stage.name else f"{stage.name} {step.name}"
    if step.units is partition_units:
        label += f" ({len(todo)} partitions)"
    elif len(units) > 1:
        label += f" ({len(todo)} units)"
    run = executor.shared(step, config) if step.shared is not None else step.run
    return Batch(label, run, [(out, config, unit, previous) for unit in todo], dict(step.resources))


def _run_step(executor: Executor, out: Location, config: PipelineConfig, stage: Stage, step: Step,
              previous: list, quiet: bool = False) -> tuple[list, int]:
    units = list(step.units(out, config, previous))
    found, todo = _plan(out, config, step, units)
    if todo:
        batch = _batch(executor, out, config, stage, step, units, todo, previous)
        found.update(zip(todo, executor.map(batch.label, batch.function, batch.calls, batch.resources, quiet=quiet)))
    return [found[unit] for unit in units], len(todo)


def _run_joined(executor: Executor, out: Location, config: PipelineConfig, stage: Stage, step: Step, joined: Step,
                previous: list, quiet: bool = False) -> tuple[list, int]:
    """``step``, then ``joined`` (whose units ``joined.joins`` derives from ``step``'s units): sent together when
    both have units to run, else whichever has."""
    units = list(step.units(out, config, previous))
    found, todo = _plan(out, config, step, units)
    joined_units = list(joined.joins(units)) if units else []
    joined_found, joined_todo = _plan(out, config, joined, joined_units)

    def then(results: list) -> Batch:
        computed = dict(zip(todo, results))
        handed = [found[unit] if unit in found else computed[unit] for unit in units]
        return _batch(executor, out, config, stage, joined, joined_units, joined_todo, handed)

    if todo and joined_todo:
        _, results = executor.map_joined(_batch(executor, out, config, stage, step, units, todo, previous), then,
                                         quiet=quiet)
    else:
        if todo:  # the reduce's outputs exist already: the map alone
            first = _batch(executor, out, config, stage, step, units, todo, previous)
            executor.map(first.label, first.function, first.calls, first.resources, quiet=quiet)
        results = []
        if joined_todo:  # every map unit found: the reduce alone, handed their results
            second = then([])
            results = executor.map(second.label, second.function, second.calls, second.resources, quiet=quiet)
    joined_found.update(zip(joined_todo, results))
    return [joined_found[unit] for unit in joined_units], len(todo) + len(joined_todo)
