"""A stage's steps (:mod:`curate.steps`) run one unit after another in this process: what one worker running
one task at a time does, for tests and benchmarks of the global stages without a Dask cluster.

    run_shape(out, config, cluster_steps.STEPS)
"""

from __future__ import annotations

from curate.output import Location
from curate.steps import Repeat, Shape
from schemas.config import PipelineConfig


def run_shape(out: Location, config: PipelineConfig, shape: Shape, previous: list | None = None,
              seen: list | None = None) -> list:
    """Run every step of ``shape`` in order (a ``Repeat`` its number of times); the last step's results.
    ``seen`` collects ``(step name, results)`` of each step run."""
    previous = previous or []
    for item in shape:
        if isinstance(item, Repeat):
            for _ in range(item.times(config)):
                previous = run_shape(out, config, item.steps, previous, seen)
            continue
        previous = [item.run(out, config, unit, previous) for unit in item.units(out, config, previous)]
        if seen is not None:
            seen.append((item.name, previous))
    return previous
