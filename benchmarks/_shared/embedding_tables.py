"""An output folder as the embed and dedup stages leave it, from given vectors: for the global stages' tests
and benchmarks, which need tables, not images.

    keys = write_embedding_out(out, vectors, partition_of_row, roles)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from dinolab.curate import tables
from dinolab.schemas.tables import utc_now


def write_embedding_out(out: Path, vectors: np.ndarray, partition: Sequence[int], roles: Sequence[str] | None = None,
                        kept: Sequence[bool] | None = None, duplicates_parts: bool = True,
                        sizes: Sequence[int] | None = None, uris: Sequence[str] | None = None,
                        formats: Sequence[str] | None = None) -> list[str]:
    """Write ``files``, ``images``, ``embeddings`` (+ ``.npy``) and ``duplicates`` tables for ``vectors``.

    Row ``i`` is key ``img-<i>`` in partition ``partition[i]`` with role ``roles[i]`` (default pool), kept by
    dedup unless ``kept[i]`` is false; ``duplicates`` has one part per partition, or one part in all when
    ``duplicates_parts`` is false (as the single-task dedup writes); ``uris``, ``formats`` and ``sizes`` (bytes)
    describe the image files (default: JPEG files of 1000 bytes that need not exist). Returns the keys.
    """
    n = len(vectors)
    partition = np.asarray(partition, dtype=np.int64)
    roles = list(roles) if roles is not None else ["pool"] * n
    kept = np.ones(n, dtype=bool) if kept is None else np.asarray(kept, dtype=bool)
    sizes = np.asarray(sizes if sizes is not None else np.full(n, 1000), dtype=np.int64)
    keys = [f"img-{i:08d}" for i in range(n)]
    uris = list(uris) if uris is not None else [f"/lake/{role}/{key}.jpg" for role, key in zip(roles, keys)]
    formats = list(formats) if formats is not None else ["JPEG"] * n
    duplicate_rows = []
    for part in sorted(set(partition.tolist())):
        rows = np.flatnonzero(partition == part)
        common = {"key": [keys[i] for i in rows], "uri": [uris[i] for i in rows], "role": [roles[i] for i in rows],
                  "set": [roles[i] for i in rows], "partition": [part] * len(rows)}
        tables.write_part(out, "files", part, pa.table(common))
        tables.write_part(out, "images", part, pa.table({
            **common, "bytes": sizes[rows], "sha256": [f"{i:064x}" for i in rows], "width": [32] * len(rows),
            "height": [32] * len(rows), "format": [formats[i] for i in rows], "phash": [None] * len(rows),
            "status": ["ok"] * len(rows), "error": [None] * len(rows), "provenance": [None] * len(rows),
            "ingested_at": [utc_now()] * len(rows)}))
        metadata = pa.table({"key": common["key"], "image_path": common["uri"], "set": common["set"],
                             "role": common["role"]})
        tables.write_array(out, "embeddings", part, vectors[rows], metadata)
        tables.write_part(out, "embeddings", part, pa.table({
            "key": common["key"], "role": common["role"], "set": common["set"],
            "row": np.arange(len(rows), dtype=np.int32)}))
        pool = [i for i in rows if roles[i] == "pool"]
        duplicates = pa.table({"key": [keys[i] for i in pool], "uri": [uris[i] for i in pool],
                               "group": np.asarray(pool, dtype=np.int64), "kept": kept[pool],
                               "reason": [None if kept[i] else "near-copy" for i in pool],
                               "kept_key": [None] * len(pool), "similarity": [None] * len(pool)})
        if duplicates_parts:
            tables.write_part(out, "duplicates", part, duplicates)
        else:
            duplicate_rows.append(duplicates)
    if not duplicates_parts:
        tables.write_part(out, "duplicates", 0, pa.concat_tables(duplicate_rows))
    return keys
