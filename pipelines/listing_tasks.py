"""The lake listing as Dask tasks: one task per set to split it, one per unit to list it, one per unit to publish it.

The client holds units and counts, never the lake's file names (:mod:`curate.lakes.listing`). Local
folder sets alone are listed by the client as they always were (:func:`curate.lakes.sets.files_table`).
"""

from __future__ import annotations

from curate.lakes.sets import ImageSet
from curate.lakes import LakeError, listing


def _in_order(pipeline, futures: list, label: str) -> list:
    """The results of ``futures`` in submission order (the progress shows them as they finish); the first
    :class:`LakeError` a task returned is raised here, on the client."""
    pipeline._gather(futures, label)
    results = [future.result() for future in futures]
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


def list_lake(pipeline, sets: list[ImageSet]) -> int:
    """Write the ``files`` table of ``sets`` through ``pipeline``'s client; returns the number of partitions."""
    config, out = pipeline.config, pipeline.out
    split = [pipeline._submit(f"list-split-{i:04d}", _user_errors_returned, listing.units, image_set, config)
             for i, image_set in enumerate(sets)]
    per_set = _in_order(pipeline, split, f"listing: split {len(sets)} sets")
    units = [unit for found in per_set for unit in found]
    owners = [index for index, found in enumerate(per_set) for _ in found]
    listed = [pipeline._submit(f"list-unit-{n:06d}", _user_errors_returned, listing.list_unit, out, n, unit, config)
              for n, unit in enumerate(units)]
    counts = _in_order(pipeline, listed, f"listing: {len(units)} units")
    listing.check_counts(sets, owners, counts)
    size = config.ingest.partition_size
    firsts = listing.first_partitions(counts, size)
    published = [pipeline._submit(f"list-publish-{n:06d}", listing.publish_unit, out, n, unit, firsts[n], size)
                 for n, unit in enumerate(units)]
    total = sum(pipeline._gather(published, "listing: files table"))
    listing.finish(out)
    return total
