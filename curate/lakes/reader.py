"""Read one partition's files: every container (tar, parquet file) and every store opened once, not once per image.

The uris of a partition are grouped by what holds them — local files, one fsspec protocol, one tar,
one parquet file — and each group is read in one go; an entry the listing refused (``skip://``) is
never read, it comes back as :class:`~curate.lakes.uris.RefusedFile`. Results come as ``(uri, bytes or exception)``,
each distinct uri once, group by group (input order within a group); a failure is a value, never
raised, so one bad file or container never loses the others::

    for uri, data in read_partition(uris, {"endpoint_url": "http://127.0.0.1:9000"}):
        if isinstance(data, BaseException): ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dinolab.curate.lakes import embeddings, fsspec_lake, parquet, tar
from dinolab.curate.lakes import provenance as lake_provenance
from dinolab.curate.lakes.uris import RefusedFile, Source, parse, skip_reason

Result = tuple[str, "bytes | BaseException"]
Reader = Callable[[Sequence[str]], Iterator[Result]]
"""Anything that reads uris as :func:`read_partition` does (e.g. :func:`curate.fetched.reader`)."""


def read_local(path: str) -> bytes:
    return Path(path).read_bytes()


def read_partition(uris: Iterable[str], storage_options: Mapping[str, Any] | None = None,
                   read_file: Callable[[str], bytes] | None = None,
                   provenance: dict[str, dict[str, Any]] | None = None) -> Iterator[Result]:
    """``(uri, bytes or exception)`` for each distinct uri, containers opened once per call.

    ``read_file(path)`` reads a plain local file (default: the file's bytes; tests pass one that fails).
    With ``provenance`` (a dict), the lake's metadata of each tar member or parquet row read is stored in
    it as ``provenance[uri] = {...}`` (:mod:`curate.lakes.provenance`; files and URLs have none).
    """
    read_file = read_file or read_local
    uris = list(dict.fromkeys(uris))
    rows = [uri for uri in uris if embeddings.is_row(uri)]
    if rows:  # a precomputed embedding's image is the file its metadata row names
        named: dict[str, list[str]] = {}
        for uri, image in embeddings.images(rows).items():
            if image is None:
                yield uri, FileNotFoundError(f"{uri}: its metadata row names no image_path or url")
            else:
                named.setdefault(image, []).append(uri)
        for image, data in read_partition(list(named), storage_options, read_file):
            for uri in named[image]:
                yield uri, data
    groups: dict[tuple[str, str], list[tuple[str, Source]]] = {}
    for uri in uris:
        if embeddings.is_row(uri):
            continue
        try:
            source = parse(uri)
        except ValueError as error:
            yield uri, error
            continue
        if source.kind == "skip":
            yield uri, RefusedFile(skip_reason(source))
            continue
        group = "" if source.kind in ("local", "url") else source.location
        if source.kind == "url":
            group = fsspec_lake.protocol(uri)
        groups.setdefault((source.kind, group), []).append((uri, source))
    for (kind, location), members in groups.items():
        if kind == "local":
            for uri, _ in members:
                try:
                    yield uri, read_file(uri)
                except Exception as error:  # noqa: BLE001 - reported per file
                    yield uri, error
        elif kind == "url":
            yield from fsspec_lake.read_files([uri for uri, _ in members], storage_options)
        elif kind == "tar":
            by_name = {source.member: uri for uri, source in members}
            sidecars: dict[str, dict[str, bytes]] | None = {} if provenance is not None else None
            for name, data in tar.read_members(location, list(by_name), storage_options, sidecars):
                if sidecars is not None:
                    provenance[by_name[name]] = lake_provenance.from_members(sidecars.get(name, {}))
                yield by_name[name], data
        else:
            by_cell = {(source.column, source.row): uri for uri, source in members}
            rows: dict[tuple[str, int], dict[str, Any]] | None = {} if provenance is not None else None
            for cell, data in parquet.read_rows(location, list(by_cell), storage_options, rows):
                if rows is not None:
                    provenance[by_cell[cell]] = lake_provenance.from_row(rows.get(cell, {}))
                yield by_cell[cell], data


def read_uri(uri: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """The bytes of one uri of any kind (its container opened for it alone: use :func:`read_partition` for many)."""
    for _, data in read_partition([uri], storage_options):
        if isinstance(data, BaseException):
            raise data
        return data
    raise FileNotFoundError(uri)
