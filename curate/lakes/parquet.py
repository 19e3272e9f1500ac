"""Parquet lakes: a column of image bytes (read in place), or a column of paths or URLs to read from.

The bytes column is a binary column, or a struct with a ``bytes`` field (Hugging Face's ``image``
feature: ``{bytes, path}``); ``image.bytes`` names the field explicitly. Without a column named
``image`` the table's one column of image bytes is taken (img2dataset's ``jpg``: :func:`find_image_column`).
Each row becomes ``parquet://COLUMN/ROW::CONTAINER``; reading opens the file once, maps rows to row
groups from the footer and reads only the row groups and the columns asked for (the others too when
the row's provenance is wanted). A path column gives each row's file instead: paths are resolved against
the table's own folder and filesystem, one leaving it (absolute elsewhere, ``..``, a local path in a
remote table) is a ``skip://`` entry unless the user allows it (``ingest.allow_outside_paths=true``), and
URLs (any ``scheme://``) are only taken when the user asks (``ingest.fetch_urls=true``)::

    uris = list_rows("train.parquet", column="image")        # parquet://image/0::file:///.../train.parquet, ...
    uris = list_rows("index.parquet", path_column="url", fetch_urls=True)   # https://..., ...
"""

from __future__ import annotations

import bisect
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dinolab.core.storage import is_remote
from dinolab.curate.lakes.fsspec_lake import open_binary
from dinolab.curate.lakes.uris import LakeError, as_url, has_credentials, is_url, local_path, parquet_row, skipped

PARQUET_SUFFIXES = (".parquet", ".pq")


def is_parquet(uri: str) -> bool:
    return uri.lower().rstrip("/").endswith(PARQUET_SUFFIXES)


def _bytes_column(schema: pa.Schema, column: str) -> tuple[str, str | None]:
    """``(top-level column, struct field or None)`` of ``column``; :class:`LakeError` if it holds no bytes."""
    top, _, sub = column.partition(".")
    if top not in schema.names:
        raise LakeError(f"no column {top!r} (columns: {', '.join(schema.names)}); set ingest.image_column "
                        "or ingest.path_column")
    kind = schema.field(top).type
    if pa.types.is_struct(kind):
        sub = sub or ("bytes" if kind.get_field_index("bytes") >= 0 else "")
        if not sub or kind.get_field_index(sub) < 0:
            raise LakeError(f"struct column {top!r} has no field {sub or 'bytes'!r}")
        kind = kind.field(sub).type
    elif sub:
        raise LakeError(f"column {top!r} is not a struct: no field {sub!r}")
    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        raise LakeError(f"column {column!r} holds {kind}, not image bytes")
    return top, sub or None


DEFAULT_COLUMN = "image"
_IMAGE_NAMES = ("image", "img", "jpg", "jpeg", "png", "webp")
"""Column names taken as the image bytes when the configured column is absent (img2dataset: ``jpg``)."""


def find_image_column(schema: pa.Schema, column: str = DEFAULT_COLUMN) -> tuple[str, str | None]:
    """``(top-level column, struct field or None)`` of the image bytes: ``column``, or, when that is the
    default ``image`` and absent, the one column of image bytes the table has (a binary column, or a struct
    with a binary ``bytes`` field as Hugging Face writes), preferring :data:`_IMAGE_NAMES`."""
    if column != DEFAULT_COLUMN or column.partition(".")[0] in schema.names:
        return _bytes_column(schema, column)
    candidates = []
    for field in schema:
        try:
            candidates.append(_bytes_column(schema, field.name))
        except LakeError:
            continue
    named = [found for found in candidates if found[0].lower() in _IMAGE_NAMES]
    if len(named) == 1 or (not named and len(candidates) == 1):
        return (named or candidates)[0]
    found = ", ".join(top for top, _ in candidates) or "none"
    raise LakeError(f"no column {column!r} and no single column of image bytes (binary columns: {found}; columns: "
                    f"{', '.join(schema.names)}); set ingest.image_column or ingest.path_column")


def _holds_binary(kind: pa.DataType) -> bool:
    """Whether a column type is or holds bytes (a binary column, a struct or list with one inside)."""
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        return True
    return any(_holds_binary(kind.field(i).type) for i in range(kind.num_fields))


def _metadata_columns(schema: pa.Schema, image: str) -> list[str]:
    """The columns of a row read as its provenance: all but the image column and those holding bytes."""
    return [field.name for field in schema if field.name != image and not _holds_binary(field.type)]


def list_rows(container: str, column: str = "image", path_column: str = "", fetch_urls: bool = False,
              storage_options: Mapping[str, Any] | None = None, allow_outside: bool = False) -> list[str]:
    """The ``files`` uris of one parquet file: one per row (bytes column) or per distinct path/URL."""
    try:
        with open_binary(as_url(container), storage_options) as stream:
            parquet = pq.ParquetFile(stream)
            schema = parquet.schema_arrow
            if not path_column:
                top, sub = find_image_column(schema, column)
                name = f"{top}.{sub}" if sub else top
                return [parquet_row(name, row, container) for row in range(parquet.metadata.num_rows)]
            if path_column not in schema.names:
                raise LakeError(f"no column {path_column!r} (columns: {', '.join(schema.names)})")
            values = parquet.read(columns=[path_column]).column(path_column).to_pylist()
    except (OSError, pa.ArrowInvalid) as error:
        raise LakeError(f"{container}: not a readable parquet file ({type(error).__name__}: {error})") from None
    except LakeError as error:
        raise LakeError(f"{container}: {error}") from None
    return _resolve(container, values, path_column, fetch_urls, allow_outside)


def _resolve(container: str, values: list, column: str, fetch_urls: bool, allow_outside: bool) -> list[str]:
    """The uris of a column of paths: each resolved against the table's own folder and filesystem.

    A path that leaves the folder (absolute elsewhere, ``..``, a link out of it), a local path named by a
    remote table or a ``file://`` URL is a ``skip://`` entry unless ``allow_outside``; so is a path holding NUL.
    """
    base = as_url(container)
    local_base = local_path(base)
    uris: dict[str, None] = {}
    for value in values:
        if not value:
            continue
        value = str(value)
        if "\0" in value:
            uris[skipped("nul", value)] = None
            continue
        if is_remote(value):
            if not fetch_urls:
                raise LakeError(f"{container}: column {column!r} holds URLs ({value.split('://')[0]}://...); they are "
                                "fetched only when asked: pass ingest.fetch_urls=true")
            if has_credentials(value):
                raise LakeError(f"{container}: column {column!r} holds a URL with a user or password; give "
                                "credentials through the environment or --storage-option instead")
            uris[value] = None
            continue
        path = local_path(value) or value
        if local_base is not None:
            uris[_local(Path(local_base).parent, path, allow_outside)] = None
        elif is_url(value) or PurePosixPath(path).is_absolute() or PureWindowsPath(path).drive:
            uris[path if allow_outside else skipped("filesystem", value)] = None
        else:
            uris[_remote(base, path, allow_outside)] = None
    return list(uris)


def _local(folder: Path, path: str, allow_outside: bool) -> str:
    """A local table's path, resolved (links too) from its folder; ``skip://outside`` if it leaves it."""
    folder = folder.resolve()
    target = (folder / path).resolve()
    return str(target) if allow_outside or target.is_relative_to(folder) else skipped("outside", path)


def _remote(base: str, path: str, allow_outside: bool) -> str:
    """A remote table's relative path as a URL beside it; ``skip://outside`` if ``..`` climbs out of its prefix."""
    scheme, _, rest = base.partition("://")
    relative = posixpath.normpath(path)
    if (relative == ".." or relative.startswith("../")) and not allow_outside:
        return skipped("outside", path)
    return f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), relative))}"


def read_rows(container: str, cells: Sequence[tuple[str, int]], storage_options: Mapping[str, Any] | None = None,
              metadata: dict[tuple[str, int], dict[str, Any]] | None = None
              ) -> Iterator[tuple[tuple[str, int], bytes | BaseException]]:
    """``((column, row), bytes or exception)`` for each distinct cell, by row group (the file opened once).

    With ``metadata`` (a dict), the row's other non-binary columns are read too and stored as
    ``metadata[(column, row)] = {name: value}``.
    """
    cells = list(dict.fromkeys(cells))
    try:
        stream = open_binary(as_url(container), storage_options)
    except Exception as error:  # noqa: BLE001
        for cell in cells:
            yield cell, error
        return
    with stream:
        try:
            parquet = pq.ParquetFile(stream)
            starts = [0]
            for group in range(parquet.metadata.num_row_groups):
                starts.append(starts[-1] + parquet.metadata.row_group(group).num_rows)
        except Exception as error:  # noqa: BLE001
            for cell in cells:
                yield cell, OSError(f"not a readable parquet file ({type(error).__name__}: {error})")
            return
        by_group: dict[tuple[int, str], list[tuple[str, int]]] = {}
        for column, row in cells:
            if not 0 <= row < starts[-1]:
                yield (column, row), FileNotFoundError(f"no row {row} (the table has {starts[-1]})")
                continue
            by_group.setdefault((bisect.bisect_right(starts, row) - 1, column), []).append((column, row))
        for (group, column), wanted in sorted(by_group.items()):
            try:
                top, sub = _bytes_column(parquet.schema_arrow, column)
                others = [] if metadata is None else _metadata_columns(parquet.schema_arrow, top)
                table = parquet.read_row_group(group, columns=[top, *others])
                values = table.column(top).combine_chunks()
                if sub:
                    values = values.field(sub)
                if others:
                    rows = table.select(others)
                    for cell in wanted:
                        metadata[cell] = rows.slice(cell[1] - starts[group], 1).to_pylist()[0]
            except Exception as error:  # noqa: BLE001
                for cell in wanted:
                    yield cell, OSError(f"column {column!r} unreadable ({type(error).__name__}: {error})")
                continue
            for cell in wanted:
                value = values[cell[1] - starts[group]].as_py()
                yield cell, value if value is not None else FileNotFoundError("no image bytes in this row")
