"""The lake listing as Dask tasks: one task per set to split it, one per unit to list it, one per unit to publish it.

The client holds units and counts, never the lake's file names (:mod:`curate.lakes.listing`). Local
folder sets alone are listed by the client as they always were (:func:`curate.lakes.sets.files_table`).
"""

from __future__ import annotations

from dinolab.curate.lakes.sets import ImageSet
from dinolab.curate.lakes import LakeError, listing
from dinolab.curate.output import Location
from dinolab.schemas.config import PipelineConfig


def _checked(results: list) -> list:
    """``results`` as they are; the first :class:`LakeError` a task returned is raised here, on the client."""
    for result in results:
        if isinstance(result, LakeError):
            raise result
    return results


def _user_errors_returned(function, *args):
    """Run a listing step in a task; a :class:`LakeError` (a bad lake, not a failed worker) is returned, not
    raised, so the client reports it in one line without worker tracebacks or retries."""
    try:
        return function(*args)
    except LakeError as error:
        return error


def list_lake(executor, out: Location, sets: list[ImageSet], config: PipelineConfig) -> int:
    """Write the ``files`` table of ``sets`` through ``executor`` (:mod:`pipelines.dispatch`); returns the
    number of partitions."""
    per_set = _checked(executor.map(f"listing: split {len(sets)} sets", _user_errors_returned,
                                    [(listing.units, image_set, config) for image_set in sets]))
    units = [unit for found in per_set for unit in found]
    owners = [index for index, found in enumerate(per_set) for _ in found]
    counts = _checked(executor.map(f"listing: {len(units)} units", _user_errors_returned,
                                   [(listing.list_unit, out, n, unit, config) for n, unit in enumerate(units)]))
    listing.check_counts(sets, owners, counts)
    size = config.ingest.partition_size
    firsts = listing.first_partitions(counts, size)
    total = sum(executor.map("listing: files table", listing.publish_unit,
                             [(out, n, unit, firsts[n], size) for n, unit in enumerate(units)]))
    listing.finish(out)
    return total
