"""One partition at a time: the kept pool of a lake partition, and small array files of a stage's work folder.

The global stages (cluster, sample, shard) read the lake one partition at a time, never the whole of it:
:func:`kept_pool` is partition ``p``'s deduplicated pool images (embeddings rows in their order, with the
``[n, d]`` vectors); :func:`save_arrays` / :func:`load_arrays` keep a step's intermediate state as ``.npz``
files under ``OUT/work/<stage>/`` (published atomically, so a file that exists is complete)::

    pool = kept_pool(out, 3)
    save_arrays(work(out, "cluster") / "x.npz", labels=labels)
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dinolab.curate import output, tables
from dinolab.curate.output import Location


def work(out: Location, stage: str) -> Location:
    """The work folder of a global stage, ``OUT/work/<stage>``."""
    return output.join(out, "work", stage)


def save_arrays(path: Location, **arrays: np.ndarray) -> None:
    """Publish ``arrays`` as one ``.npz`` at ``path``."""
    output.publish(path, lambda stream: np.savez(stream, **arrays))


def load_arrays(path: Location) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` written by :func:`save_arrays`, in memory."""
    with np.load(output.readable(path)) as data:
        return {name: data[name] for name in data.files}


def save_array(path: Location, array: np.ndarray) -> None:
    output.publish(path, lambda stream: np.save(stream, array))


def load_array(path: Location) -> np.ndarray:
    if isinstance(path, output.RemotePath):
        return np.load(io.BytesIO(output.read_bytes(path)))
    return np.load(path)


@dataclass(frozen=True)
class Pool:
    """Kept pool images of one partition, in embeddings-row order: keys, uris and float32 ``[n, d]`` vectors."""

    keys: list[str]
    uris: list[str]
    vectors: np.ndarray


def duplicates_of(out: Location, partition: int, keys: pa.Array) -> pa.Table:
    """The ``duplicates`` rows of ``keys`` (images of partition ``partition``): that part of the table when dedup
    writes one part per partition, else the whole table filtered to ``keys`` (a dedup that wrote one part)."""
    parts = tables.done_parts(out, "duplicates")
    if partition in parts and (len(parts) > 1 or tables.done_parts(out, "files") == {partition}):
        return tables.read_part(out, "duplicates", partition)
    duplicates = tables.read_table(out, "duplicates")
    return duplicates.filter(pc.is_in(duplicates["key"], value_set=keys))


def _kept_keys(out: Location, partition: int, keys: pa.Array) -> np.ndarray:
    """Which of ``keys`` the ``duplicates`` table keeps."""
    duplicates = duplicates_of(out, partition, keys)
    kept = duplicates.filter(duplicates["kept"]).column("key")
    return np.asarray(pc.is_in(keys, value_set=kept).to_numpy(zero_copy_only=False), dtype=bool)


def kept_pool(out: Location, partition: int) -> Pool:
    """Partition ``partition``'s readable pool images that dedup keeps (none for a curated or eval partition)."""
    rows = tables.read_part(out, "embeddings", partition)
    rows = rows.filter(pc.equal(rows["role"], "pool"))
    matrix = tables.read_array(out, "embeddings", partition)
    if not len(rows):
        return Pool([], [], np.zeros((0, matrix.shape[1] if matrix.ndim == 2 else 0), dtype=np.float32))
    keys = rows.column("key").combine_chunks()
    mask = _kept_keys(out, partition, keys)
    rows = rows.filter(pa.array(mask))
    vectors = np.asarray(matrix[rows.column("row").to_numpy()], dtype=np.float32)
    images = tables.read_part(out, "images", partition)
    at = pc.index_in(rows["key"], value_set=images["key"])
    uris = images["uri"].take(at).to_pylist()
    return Pool(rows.column("key").to_pylist(), uris, vectors)
