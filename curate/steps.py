"""The shape of a stage's work: named steps, each run once per unit, their state passed through files under OUT.

A :class:`Step` is a plain function ``run(out, config, unit, previous) -> dict`` and a way to find its
units: ``units(out, config, previous) -> list`` (default: one unit, ``None``). ``unit`` is a small hashable
value (a partition number, a shard number, a ``(query_part, index_shard)`` pair, an iteration number);
``previous`` is the list of the results of the step before, in the order of its units (``[]`` for a
stage's first step). Results are small (counts, names, a ``[k, d]`` partial sum): anything as large as the
lake goes to files under ``OUT`` with deterministic names, written atomically, so a unit run twice (a
rescheduled task, a rerun) writes the same files. ``done(out, config, units)`` (optional) gives the results
of the units whose outputs already exist, which are then not run again. :class:`Repeat` runs a group of
steps a number of times (e.g. Lloyd iterations: assign per partition, then reduce), each iteration's first
step seeing the results of the previous iteration's last step. A stage (:class:`curate.stages.Stage`) is a
tuple of these; ``pipelines/`` runs any of them (as Dask tasks, or in a loop) knowing nothing of what they
do. A three-step stage::

    def plan(out, config, unit, previous):           # one unit: writes OUT/work/x/plan.json
        return {"parts": 8}

    def part(out, config, unit, previous):           # eight units, one per part
        return {"rows": write_part(out, unit)}

    def finish(out, config, unit, previous):         # previous: the eight results, in unit order
        return {"in": 0, "out": sum(r["rows"] for r in previous)}

    STEPS = (Step("plan", plan),
             Step("part", part, units=lambda out, config, previous: range(previous[0]["parts"])),
             Step("finish", finish))
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dinolab.curate.output import Location
from dinolab.schemas.config import PipelineConfig

Unit = Hashable
StepFunction = Callable[..., dict]
"""``run(out, config, unit, previous)``; with ``shared`` declared, also ``shared=`` (what the process built)."""


def one_unit(out: Location, config: PipelineConfig, previous: list) -> list[Unit]:
    """The default units of a step: one, named ``None``."""
    return [None]


@dataclass(frozen=True)
class Step:
    """One named step of a stage: ``run`` once per unit of ``units``.

    ``resources`` are asked of the workers that advertise them (``{"GPU": 1}`` on CUDA workers) and ignored
    elsewhere. ``shared(config)`` builds what every process running the step loads once (the embedder),
    passed to ``run`` as ``shared=``; a process started later (a worker restarted) builds it too.
    """

    name: str
    run: StepFunction
    units: Callable[[Location, PipelineConfig, list], Iterable[Unit]] = one_unit
    done: Callable[[Location, PipelineConfig, list], Mapping[Unit, dict]] | None = None
    resources: Mapping[str, float] = field(default_factory=dict)
    shared: Callable[[PipelineConfig], Any] | None = None
    joins: Callable[[list[Unit]], Iterable[Unit]] | None = None
    """For a reduce: its units from the units of the step before (the same ones ``units`` finds from that step's
    results). The dispatcher then sends both steps' tasks at once, this step's waiting on the others (a map and
    its reduce cost one round trip, not two); without it, a step starts when the one before has returned."""


@dataclass(frozen=True)
class Repeat:
    """``steps`` run ``times(config)`` times in a row (fewer when ``until(results)`` of an iteration's last
    step says so). Each step names its iteration itself (in its units or results): e.g. the reduce returns
    ``{"iteration": i + 1}`` and the next map's units are ``(i + 1, partition)`` pairs."""

    steps: tuple[Step, ...]
    times: Callable[[PipelineConfig], int]
    until: Callable[[list], bool] | None = None


Shape = tuple[Step | Repeat, ...]
