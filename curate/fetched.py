"""Remote images fetched once per run: ingest keeps the bytes of every ``http(s)://`` uri it read.

A lake given as a column of web URLs would otherwise be downloaded again by every stage that needs pixels
(embed, copy detection, shards, report). Ingest writes the original bytes of the remote uris of partition
``N`` to ``OUT/fetched/part-NNNNN.parquet`` (columns ``uri``, ``data``; small row groups so a reader takes
only the rows it needs), an output of the ingest stage that goes with it when ingest is redone. Later
stages read through :func:`read`, which serves kept uris from there and everything else from the lake::

    keep(out, 3, {"https://example.org/a.jpg": b"..."})
    for uri, data in read(out, uris, storage_options, partitions=[3]): ...
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dinolab.curate import output
from dinolab.curate.lakes import Reader, read_partition
from dinolab.curate.lakes.uris import PARQUET, TAR, protocol
from dinolab.curate.output import Location

FOLDER = "fetched"
VERSION = 1
ROW_GROUP = 16
"""Images per parquet row group: a reader decodes only the groups that hold the uris it asks for."""
REMOTE = ("http", "https")
"""Protocols whose files are kept: web servers, where every fetch is a download (buckets are read in place)."""
SCHEMA = pa.schema(
    [pa.field("uri", pa.string(), False, {b"description": "the files/images uri, an http(s) URL"}),
     pa.field("data", pa.binary(), False, {b"description": "the original bytes fetched by ingest"})],
    metadata={b"dinolab.table": FOLDER.encode(), b"dinolab.schema_version": str(VERSION).encode()},
)

Result = tuple[str, "bytes | BaseException"]


def is_remote(uri: str) -> bool:
    """Whether ingest keeps this uri's bytes: a plain ``http(s)://`` file (not a tar member or parquet row)."""
    return not uri.startswith((TAR, PARQUET)) and protocol(uri) in REMOTE


def folder(out: Location) -> Location:
    return out / FOLDER


def part_path(out: Location, partition: int) -> Location:
    return folder(out) / f"part-{partition:05d}.parquet"


def keep(out: Location, partition: int, contents: Mapping[str, bytes]) -> Location | None:
    """Publish the remote uris of ``contents`` as part ``partition`` (nothing when none is remote)."""
    kept = {uri: data for uri, data in contents.items() if is_remote(uri)}
    if not kept:
        return None
    table = pa.table({"uri": list(kept), "data": list(kept.values())}, schema=SCHEMA)
    path = part_path(out, partition)
    output.publish(path, lambda stream: pq.write_table(table, stream, row_group_size=ROW_GROUP, compression="none"))
    return path


def _parts(out: Location, partitions: Iterable[int] | None) -> list[Location]:
    if partitions is None:
        return [folder(out) / name for name in output.names(folder(out), "part-*.parquet")]
    return [path for path in (part_path(out, p) for p in sorted(set(partitions))) if output.is_file(path)]


def _kept(path: Location, wanted: set[str]) -> dict[str, bytes]:
    """The bytes of the ``wanted`` uris that part ``path`` holds (only their row groups are read)."""
    try:
        parquet = pq.ParquetFile(output.readable(path))
        if parquet.schema_arrow.metadata.get(b"dinolab.schema_version") != str(VERSION).encode():
            return {}
        uris = parquet.read(columns=["uri"]).column("uri")
    except (OSError, pa.ArrowInvalid, AttributeError):
        return {}  # an unreadable or foreign part: the lake is read instead
    rows = pc.indices_nonzero(pc.is_in(uris, value_set=pa.array(sorted(wanted), pa.string()))).to_numpy()
    if not len(rows):
        return {}
    found = parquet.read_row_groups(sorted({int(row) // ROW_GROUP for row in rows}), columns=["uri", "data"])
    return {uri: data for uri, data in zip(found["uri"].to_pylist(), found["data"].to_pylist()) if uri in wanted}


def read(out: Location, uris: Sequence[str], storage_options: Mapping[str, Any] | None = None,
         partitions: Iterable[int] | None = None) -> Iterator[Result]:
    """``(uri, bytes or exception)`` for each distinct uri: kept remote bytes first, the rest from the lake.

    ``partitions`` limits the search to those ingest partitions (default: every kept part).
    """
    wanted = {uri for uri in uris if is_remote(uri)}
    served: set[str] = set()
    for path in _parts(out, partitions) if wanted else ():
        for uri, data in _kept(path, wanted - served).items():
            served.add(uri)
            yield uri, data
        if served == wanted:
            break
    yield from read_partition([uri for uri in dict.fromkeys(uris) if uri not in served], storage_options)


def reader(out: Location, storage_options: Mapping[str, Any] | None = None,
           partitions: Iterable[int] | None = None) -> Reader:
    """:func:`read` bound to one output folder (a picklable callable)."""
    return functools.partial(read, out, storage_options=storage_options,
                             partitions=None if partitions is None else tuple(partitions))
