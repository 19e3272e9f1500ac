"""A synthetic lake of precomputed embeddings (``img_emb/`` + ``metadata/``, :mod:`curate.lakes.embeddings`) with
known answers: a Gaussian mixture on the unit sphere, planted near-copies and curated queries.

Pool row ``i`` (key ``f"{i:09d}"``) is ``unit(centre[c_i] + sigma * g)`` for a component ``c_i`` drawn uniformly
from ``components`` random unit centres; ``sigma`` makes two members of one component ``within`` cosine apart
on average (``sigma^2 d = 1 / within - 1``), so natural neighbours stay well below the dedup threshold. A share
``copy_share`` of the rows are near-copies of other (non-copy) rows: ``unit(source + tau * g)`` at cosine
``copy_cosine`` to their source on average. The curated set is ``queries`` fresh members of a tenth of the
components. Everything is written file by file (``file_rows`` rows each, float16), so no more than one file's
vectors and a few integers per row are in memory. The answers go to ``truth.npz``::

    lake = write_mixture_lake(Path("/tmp/lake"), size=100_000)
    truth = lake.truth()        # labels, copies, sources, query_labels, curated_components
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dinolab.curate.lakes.embeddings import ARRAY_DIR, METADATA_DIR


@dataclass(frozen=True)
class MixtureLake:
    """Where the pool, the curated set and the answers are, and how the lake was drawn."""

    pool: Path
    curated: Path
    truth_file: Path
    size: int
    dim: int
    components: int
    copies: int
    queries: int
    curated_components: int

    def truth(self) -> dict[str, np.ndarray]:
        with np.load(self.truth_file) as data:
            return {name: data[name] for name in data.files}


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _noise_scale(cosine: float, dim: int) -> float:
    """Per-coordinate noise that takes a unit vector to ``cosine`` of where it started, on average (here: of
    the centre for ``sqrt(within)``, of the source for a copy)."""
    return float(np.sqrt((1 / cosine**2 - 1) / dim))


def _write_file(folder: Path, number: int, vectors: np.ndarray, keys: list[str]) -> None:
    np.save(folder / ARRAY_DIR / f"{ARRAY_DIR}_{number:05d}.npy", vectors.astype(np.float16))
    pq.write_table(pa.table({"key": keys, "image_path": [f"images/{key}.jpg" for key in keys]}),
                   folder / METADATA_DIR / f"{METADATA_DIR}_{number:05d}.parquet")


def _bounds(size: int, file_rows: int) -> np.ndarray:
    return np.r_[np.arange(0, size, file_rows), size]


def write_mixture_lake(root: Path, size: int, dim: int = 256, components: int | None = None,
                       copy_share: float = 0.01, queries: int = 10_000, within: float = 0.25,
                       copy_cosine: float = 0.9, file_rows: int = 100_000, seed: int = 0) -> MixtureLake:
    """Write ``root/pool`` (``size`` rows, copies included), ``root/curated`` and ``root/truth.npz``.

    ``components`` defaults to one per 1,000 rows (so a component's size, and its members' nearest-neighbour
    cosine, does not grow with the pool).
    """
    components = components or max(1, size // 1000)
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((components, dim))).astype(np.float32)
    labels = rng.integers(0, components, size).astype(np.int32)
    copies_count = int(round(copy_share * size))
    copies = np.sort(rng.choice(size, copies_count, replace=False))
    originals = np.setdiff1d(np.arange(size), copies)
    sources = rng.choice(originals, copies_count, replace=False)
    del originals
    labels[copies] = labels[sources]
    sigma, tau = _noise_scale(np.sqrt(within), dim), _noise_scale(copy_cosine, dim)

    pool, curated = root / "pool", root / "curated"
    for folder in (pool, curated):
        (folder / ARRAY_DIR).mkdir(parents=True, exist_ok=True)
        (folder / METADATA_DIR).mkdir(parents=True, exist_ok=True)
    bounds = _bounds(size, file_rows)
    for number, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        part_rng = np.random.default_rng([seed, 1, number])
        noise = part_rng.standard_normal((stop - start, dim), dtype=np.float32)
        _write_file(pool, number, _unit(centres[labels[start:stop]] + sigma * noise),
                    [f"{i:09d}" for i in range(start, stop)])
    # the copies, file by file: their sources read back (float16, as stored) from the files written above
    source_file = np.searchsorted(bounds, sources, side="right") - 1
    copy_file = np.searchsorted(bounds, copies, side="right") - 1
    for number in np.unique(copy_file):
        mine = np.flatnonzero(copy_file == number)
        found = np.empty((len(mine), dim), np.float32)
        for other in np.unique(source_file[mine]):
            matrix = np.load(pool / ARRAY_DIR / f"{ARRAY_DIR}_{other:05d}.npy", mmap_mode="r")
            at = source_file[mine] == other
            found[at] = matrix[sources[mine][at] - bounds[other]]
        part_rng = np.random.default_rng([seed, 2, int(number)])
        noise = part_rng.standard_normal((len(mine), dim), dtype=np.float32)
        target = np.load(pool / ARRAY_DIR / f"{ARRAY_DIR}_{number:05d}.npy", mmap_mode="r+")
        target[copies[mine] - bounds[number]] = _unit(found + tau * noise).astype(np.float16)
        target.flush()
        del target

    chosen = np.sort(rng.choice(components, max(1, components // 10), replace=False))
    query_labels = rng.choice(chosen, queries).astype(np.int32)
    query_bounds = _bounds(queries, file_rows)
    for number, (start, stop) in enumerate(zip(query_bounds[:-1], query_bounds[1:])):
        noise = np.random.default_rng([seed, 3, number]).standard_normal((stop - start, dim), dtype=np.float32)
        _write_file(curated, number, _unit(centres[query_labels[start:stop]] + sigma * noise),
                    [f"q{i:07d}" for i in range(start, stop)])
    truth_file = root / "truth.npz"
    np.savez(truth_file, labels=labels, copies=copies, sources=sources, query_labels=query_labels,
             curated_components=chosen)
    return MixtureLake(pool, curated, truth_file, size, dim, components, copies_count, queries, len(chosen))


def read_mixture_lake(root: Path, dim: int = 256) -> MixtureLake:
    """The lake :func:`write_mixture_lake` wrote under ``root`` (its answers read back from ``truth.npz``)."""
    truth_file = root / "truth.npz"
    with np.load(truth_file) as truth:
        size, components = len(truth["labels"]), int(truth["labels"].max()) + 1 if len(truth["labels"]) else 0
        copies, queries, chosen = len(truth["copies"]), len(truth["query_labels"]), len(truth["curated_components"])
    return MixtureLake(root / "pool", root / "curated", truth_file, size, dim, components, copies, queries, chosen)
