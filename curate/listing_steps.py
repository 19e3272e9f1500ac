"""The list stage's steps: the lake's ``files`` table, one part per partition, listed in one unit or in many.

The sets come from the run's record (``OUT/run.json``, written before any stage runs). A lake of local
folders (or a listing the caller made, staged by :func:`provide`) is listed in one unit,
:func:`curate.lakes.sets.files_table`; any other lake is split (one unit per set), each of its units
listed in its own unit and published as ``files`` parts (:mod:`curate.lakes.listing`), so the process
that orchestrates holds units and counts, never the lake's file names. The stage's last step (declared
in :mod:`curate.stages`) records the parts and redoes the partitions whose part changed::

    for step in STEPS:                      # client, split, list, publish: a lake uses one path or the other
        previous = [step.run(out, config, unit, previous) for unit in step.units(out, config, previous)]

A listing error of the lake (:class:`~curate.lakes.uris.LakeError`: no such file, no image column) is
returned by the unit that met it, not raised, and raised by the next step's ``units``, which runs where the
stage is orchestrated: one line for the user, no failed task retried, no worker traceback.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from dinolab.curate import manifest, output, tables
from dinolab.curate.lakes import LakeError, listing
from dinolab.curate.lakes.sets import ImageSet, files_table
from dinolab.curate.output import Location
from dinolab.curate.steps import Step
from dinolab.schemas.config import PipelineConfig

STAGE = "list"
RUN_FILE = "run.json"
"""``OUT/run.json``: the run's sets and config, recorded by the orchestrator (:mod:`pipelines.state`)."""
GIVEN = "given.parquet"
"""A listing the caller made (:func:`provide`), staged beside the units until the stage publishes it."""
LISTING_UNIT = "listing"
"""The lake listing (every ``files`` part) as recorded: one unit, since its partition numbers span the lake."""


# -- the run's sets, a listing given by the caller, the record of a complete listing -----------------------


def run_sets(out: Location) -> list[ImageSet]:
    """The sets of the run recorded in ``OUT``."""
    return [ImageSet(**recorded) for recorded in json.loads(output.read_bytes(output.join(out, RUN_FILE)))["sets"]]


def _given(out: Location) -> Location:
    return listing.staging_dir(out) / GIVEN


def provide(out: Location, files: pa.Table) -> None:
    """Stage ``files`` (a ``files`` table the caller listed) for the stage to publish, unless the listing is
    complete (a complete listing is kept, as a rerun keeps it)."""
    if not complete(out):
        output.publish(_given(out), lambda stream: pq.write_table(files, stream))


def record_listing(out: Location) -> None:
    """Record the ``files`` parts once the whole listing is published."""
    parts = [tables.part_path(out, "files", p) for p in sorted(tables.done_parts(out, "files"))]
    manifest.record(out, STAGE, LISTING_UNIT, parts)


def listing_record(out: Location) -> dict[str, dict] | None:
    """The recorded listing: ``files`` part (relative path) -> ``{size, md5}``; ``None`` when none is."""
    return manifest.recorded(out, STAGE).get(LISTING_UNIT)


def complete(out: Location) -> bool:
    """Whether the listing is done: recorded, no unit of it staged, and every recorded part there (a damaged
    part removed by a repair makes the lake listed again)."""
    recorded, done = listing_record(out), tables.done_parts(out, "files")
    return (recorded is not None and bool(done) and not listing.in_progress(out)
            and {tables.part_number(name) for name in recorded} <= done)


# -- errors of the lake: returned by the unit that met them, raised by the next step's units ---------------


def _returned(function, *args):
    """``function(*args)``, or the :class:`LakeError` it raised (a bad lake, not a failed unit)."""
    try:
        return function(*args)
    except LakeError as error:
        return error


def _checked(results: list) -> list:
    """``results`` as they are; the first :class:`LakeError` a unit returned is raised here."""
    for result in results:
        if isinstance(result, LakeError):
            raise result
    return results


# -- one unit: a lake of local folders, or a listing the caller made ----------------------------------------


def _in_one_unit(out: Location) -> bool:
    return output.is_file(_given(out)) or all(listing.listed_by_client(image_set) for image_set in run_sets(out))


def client_units(out: Location, config: PipelineConfig, previous: list) -> list:
    return [None] if _in_one_unit(out) else []


def client_step(out: Location, config: PipelineConfig, unit: None, previous: list) -> dict | LakeError:
    """Write the ``files`` parts of the staged listing, or of the local folders listed now."""
    if output.is_file(_given(out)):
        files = pq.read_table(output.readable(_given(out)))
    else:
        found = _returned(files_table, run_sets(out), config.ingest.partition_size, config.ingest.follow_links)
        if isinstance(found, LakeError):
            return found
        files = found
    partition = files.column("partition").to_numpy()
    parts = sorted(set(partition.tolist()))
    for number in parts:
        tables.write_part(out, "files", number, files.filter(partition == number))
    return {"parts": len(parts)}


# -- many units: split each set, list each unit, cut each unit into its parts -----------------------------


def split_units(out: Location, config: PipelineConfig, previous: list) -> list[int]:
    """One unit per set (its index in the run's sets) unless the lake is listed in one unit."""
    _checked(previous)
    return [] if _in_one_unit(out) else list(range(len(run_sets(out))))


def split_step(out: Location, config: PipelineConfig, unit: int, previous: list) -> dict | LakeError:
    found = _returned(listing.units, run_sets(out)[unit], config)
    return found if isinstance(found, LakeError) else {"units": found}


def list_units(out: Location, config: PipelineConfig, previous: list) -> list[tuple[int, listing.Unit]]:
    """The units of every set, numbered across sets."""
    found = [unit for result in _checked(previous) for unit in result["units"]]
    return list(enumerate(found))


def list_step(out: Location, config: PipelineConfig, unit: tuple[int, listing.Unit],
              previous: list) -> dict | LakeError:
    number, what = unit
    count = _returned(listing.list_unit, out, number, what, config)
    return count if isinstance(count, LakeError) else {"number": number, "unit": what, "count": count}


def publish_units(out: Location, config: PipelineConfig, previous: list) -> list[tuple[int, listing.Unit, int]]:
    """Each listed unit with its first partition number (a set none of whose units holds an image is refused)."""
    listed = _checked(previous)
    if _in_one_unit(out):
        return []
    sets = run_sets(out)
    counts = [result["count"] for result in listed]
    listing.check_counts(sets, [sets.index(result["unit"].image_set) for result in listed], counts)
    firsts = listing.first_partitions(counts, config.ingest.partition_size)
    return [(result["number"], result["unit"], first) for result, first in zip(listed, firsts)]


def publish_step(out: Location, config: PipelineConfig, unit: tuple[int, listing.Unit, int], previous: list) -> dict:
    number, what, first = unit
    return {"parts": listing.publish_unit(out, number, what, first, config.ingest.partition_size)}


STEPS = (
    Step("client", client_step, client_units),
    Step("split", split_step, split_units),
    Step(STAGE, list_step, list_units),
    Step("publish", publish_step, publish_units),
)
"""The list stage's steps before its last (:func:`curate.stages.list_finish`): ``client`` (one unit) for a
lake of local folders or a given listing, else ``split`` → ``list`` → ``publish``."""
