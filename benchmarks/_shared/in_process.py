"""A stage's steps (:mod:`curate.steps`) run one unit after another in this process: what one worker running
one task at a time does, for tests and benchmarks of the global stages without a Dask cluster.

    run_shape(out, config, cluster_steps.STEPS)
"""

from __future__ import annotations

from dinolab.curate.output import Location
from dinolab.curate.steps import Repeat, Shape
from dinolab.schemas.config import PipelineConfig


def run_shape(out: Location, config: PipelineConfig, shape: Shape, previous: list | None = None,
              seen: list | None = None) -> list:
    """Run every step of ``shape`` in order (a ``Repeat`` its number of times, or until its ``until``), skipping
    the units its ``done`` finds already done (their results taken from it); the last step's results. ``seen``
    collects ``(step name, results)`` of each step and ``(step name, unit)`` of each unit run (``"ran"`` entries)."""
    previous = previous or []
    for item in shape:
        if isinstance(item, Repeat):
            for _ in range(item.times(config)):
                previous = run_shape(out, config, item.steps, previous, seen)
                if item.until is not None and item.until(previous):
                    break
            continue
        units = list(item.units(out, config, previous))
        found = dict(item.done(out, config, units)) if item.done is not None else {}
        results = []
        for unit in units:
            if unit in found:
                results.append(found[unit])
                continue
            results.append(item.run(out, config, unit, previous))
            if seen is not None:
                seen.append(("ran", (item.name, unit)))
        previous = results
        if seen is not None:
            seen.append((item.name, previous))
    return previous
