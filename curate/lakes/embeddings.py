"""Precomputed embeddings as a lake: ``img_emb/img_emb_N.npy`` + ``metadata/metadata_N.parquet`` (LAION's layout).

Each ``img_emb_N.npy`` is a float16 or float32 ``[n, d]`` matrix and ``metadata_N.parquet`` its n rows in
the same order (what clip-retrieval and embedding-reader write). A row's key is its ``key`` column when
there is one, else made from ``image_path`` or ``url`` as for any image (:func:`curate.lakes.sets.make_key`). Its
``files`` uri is ``emb://ROW::METADATA_URL``: ingest reads no image for it (the vectors are the lake), embed
takes the row's vector from the matrix, and the shard stage and the report read the image the row names
(``image_path``, relative to the folder, or ``url``) where it is readable::

    detect_folder("laion/")          # ['/abs/laion/metadata/metadata_0.parquet', ...]
    rows("/abs/laion/metadata/metadata_0.parquet")   # (keys, uris)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dinolab.curate.lakes.uris import CHAIN, LakeError, as_url, is_url, local_path

EMB = "emb://"
ARRAY_DIR, METADATA_DIR = "img_emb", "metadata"
PATH_COLUMNS = ("image_path", "url")
_NUMBER = re.compile(r"_(\d+)\.(npy|parquet)$")


def _numbered(folder: Path, prefix: str, suffix: str) -> dict[int, Path]:
    found = {}
    for path in folder.glob(f"{prefix}_*{suffix}"):
        number = _NUMBER.search(path.name)
        if number is not None:
            found[int(number.group(1))] = path.resolve()
    return found


def detect_folder(uri: str) -> list[str] | None:
    """The metadata files of a local folder in this layout (sorted by number), ``None`` for another folder;
    :class:`LakeError` when its matrices and metadata files do not pair up."""
    path = Path(uri).expanduser()
    if is_url(uri) or not (path / ARRAY_DIR).is_dir() or not (path / METADATA_DIR).is_dir():
        return None
    arrays = _numbered(path / ARRAY_DIR, ARRAY_DIR, ".npy")
    metadata = _numbered(path / METADATA_DIR, METADATA_DIR, ".parquet")
    if not arrays and not metadata:
        return None
    if set(arrays) != set(metadata):
        unpaired = sorted(set(arrays) ^ set(metadata))
        raise LakeError(f"{uri}: precomputed embeddings whose img_emb and metadata files do not pair up "
                        f"(numbers {', '.join(map(str, unpaired[:5]))})")
    return [str(metadata[number]) for number in sorted(metadata)]


def array_of(metadata_file: str) -> Path:
    """The ``img_emb_N.npy`` beside (``../img_emb/``) a ``metadata_N.parquet``."""
    path = Path(metadata_file)
    number = _NUMBER.search(path.name).group(1)
    return path.parent.parent / ARRAY_DIR / f"{ARRAY_DIR}_{number}.npy"


def row_uri(row: int, metadata_file: str) -> str:
    return f"{EMB}{row}{CHAIN}{as_url(metadata_file)}"


def parse_row(uri: str) -> tuple[int, str]:
    """``(row, metadata file path)`` of an ``emb://`` uri."""
    row, sep, container = uri[len(EMB):].partition(CHAIN)
    if not sep or not row.isdigit():
        raise ValueError(f"{uri}: a precomputed embedding URI is emb://ROW::METADATA_URL")
    return int(row), local_path(container) or container


def is_row(uri: str) -> bool:
    return uri.startswith(EMB)


def _image_column(metadata: pq.ParquetFile) -> str | None:
    """The column naming each row's image: ``image_path``, else ``url``."""
    names = set(metadata.schema_arrow.names)
    return next((name for name in PATH_COLUMNS if name in names), None)


def rows(metadata_file: str) -> tuple[list[str | None], list[str]]:
    """Keys (``None`` where the file has no ``key`` column) and ``emb://`` uris of one metadata file's rows,
    checked against its matrix's row count."""
    from dinolab.curate.lakes.sets import make_key

    table = pq.ParquetFile(metadata_file)
    count = table.metadata.num_rows
    shape = np.load(array_of(metadata_file), mmap_mode="r", allow_pickle=False).shape
    if len(shape) != 2 or shape[0] != count:
        raise LakeError(f"{metadata_file}: {count} metadata rows for an {ARRAY_DIR} matrix of shape {shape}")
    names = table.schema_arrow.names
    if "key" in names:
        keys = [str(key) for key in table.read(columns=["key"]).column("key").to_pylist()]
    else:
        column = _image_column(table)
        if column is None:
            raise LakeError(f"{metadata_file}: no key, image_path or url column to name its rows")
        keys = [make_key(str(value)) for value in table.read(columns=[column]).column(column).to_pylist()]
    return keys, [row_uri(row, metadata_file) for row in range(count)]


def vectors(uris: Sequence[str]) -> np.ndarray:
    """The float32 vectors of ``emb://`` uris, in their order (each matrix memory-mapped once)."""
    located = [parse_row(uri) for uri in uris]
    by_file: dict[str, list[int]] = {}
    for index, (_, metadata_file) in enumerate(located):
        by_file.setdefault(metadata_file, []).append(index)
    found: np.ndarray | None = None
    for metadata_file, indices in by_file.items():
        matrix = np.load(array_of(metadata_file), mmap_mode="r", allow_pickle=False)
        taken = np.asarray(matrix[[located[i][0] for i in indices]], dtype=np.float32)
        if found is None:
            found = np.empty((len(uris), matrix.shape[1]), np.float32)
        found[indices] = taken
    return found if found is not None else np.empty((0, 0), np.float32)


def images(uris: Sequence[str]) -> dict[str, str | None]:
    """The image location (a local path or URL) each ``emb://`` uri's metadata row names (``None``: none)."""
    located = {uri: parse_row(uri) for uri in uris}
    found: dict[str, str | None] = {}
    for metadata_file in {file for _, file in located.values()}:
        table = pq.ParquetFile(metadata_file)
        column = _image_column(table)
        values = table.read(columns=[column]).column(column).to_pylist() if column else []
        folder = Path(metadata_file).parent.parent
        for uri, (row, file) in located.items():
            if file != metadata_file:
                continue
            value = values[row] if row < len(values) else None
            if value is None:
                found[uri] = None
            elif is_url(str(value)):
                found[uri] = str(value)
            else:
                found[uri] = str((folder / str(value)).resolve()) if not Path(str(value)).is_absolute() else str(value)
    return found
