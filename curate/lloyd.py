"""Distributed spherical Lloyd k-means as map/reduce pieces over partitions of unit vectors (no I/O here).

Each piece is a pure function whose inputs and outputs are at most ``[k, d]`` (plus the partition it is
given), so a task per partition can run it and a reduce combine the results:

- **seeding**: every vector gets a pseudo-random score from its key (:func:`key_scores`); the ``k``
  lowest-scoring vectors of the whole pool are the first centroids. A partition keeps its own ``k`` lowest
  (:func:`lowest`), a reduce merges them (:func:`merge_lowest`): the same centroids however the pool is cut.
- **one iteration**: each partition assigns its vectors to the nearest centroid and returns per-cluster
  sums and counts (:func:`partial_sums`); the reduce adds them and normalises (:func:`update`). Sums are
  fixed point (``int64`` in units of 2^-30), so adding them is exact and the centroids do not depend on
  the order or grouping of the partitions.
- **resampling** (Vo et al. 2024, Alg. 1): the ``r`` vectors nearest each centroid form the sample the next
  k-means runs on; :func:`sample_thresholds` finds each cluster's radius from its (label, similarity) pairs,
  of which only its ``r`` most similar matter (:func:`most_similar`).
- **assignment** (:func:`nearest`) is exact (one matrix product) up to ``exact_max_k`` centroids and above
  that goes through an inverted-file index over the centroids (faiss ``IndexIVFFlat``, ``sqrt(k)`` lists,
  ``nprobe`` probed), which costs about ``(sqrt(k) + nprobe * sqrt(k)) * d`` per vector instead of ``k * d``.

Example (one process standing for the tasks)::

    scores = [key_scores(keys, seed) for keys in keys_per_part]
    centroids = seed_centroids(merge_lowest([lowest(s, v, k) for s, v in zip(scores, parts)], k))
    for _ in range(niter):
        centroids = update([partial_sums(v, centroids) for v in parts], centroids)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import scipy.sparse

from dinolab.curate.faiss_gpu import gpu_count, on_gpus

SCALE = float(1 << 20)
"""Fixed-point scale of the partial sums: a unit vector's components, in [-1, 1], are rounded to multiples of
2^-20 (an error of at most 5e-7 each), so a sum of up to 2^33 of them is an integer that float64 holds
exactly, whatever the order of the additions."""
CHUNK = 8192
"""Rows assigned at once: bounds the ``[rows, k]`` similarity block."""
SUM_CHUNK = 4096
"""Rows :func:`cluster_sums` converts to float64 at once (4 MiB at d = 256: converted in cache, 6x faster here
than the whole block at once)."""
EXACT_MAX_K = 8192
NPROBE = 16


def unit(vectors: np.ndarray) -> np.ndarray:
    """Float32 rows scaled to unit length (zero rows stay zero)."""
    vectors = np.array(vectors, dtype=np.float32, copy=True, order="C")
    if len(vectors):
        faiss.normalize_L2(vectors)
    return vectors


def key_scores(keys: Sequence[str], seed: int) -> np.ndarray:
    """A pseudo-random ``uint64`` per key, fixed by (seed, key): the order of the seeded sample."""
    salt = seed.to_bytes(8, "little")
    return np.array(
        [int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8, salt=salt).digest(), "little") for key in keys],
        dtype=np.uint64,
    )


@dataclass(frozen=True)
class Lowest:
    """The ``count`` lowest scores seen so far, ascending, with their vectors."""

    scores: np.ndarray
    vectors: np.ndarray


def lowest(scores: np.ndarray, vectors: np.ndarray, count: int) -> Lowest:
    """The ``count`` lowest-scoring rows of one partition."""
    order = np.argsort(scores, kind="stable")[:count]
    return Lowest(scores[order], np.asarray(vectors[order], dtype=np.float32))


def merge_lowest(parts: Iterable[Lowest], count: int) -> Lowest:
    """The ``count`` lowest of several partitions' :func:`lowest` (vectors compared by score only)."""
    merged: Lowest | None = None
    for part in parts:
        if merged is None:
            merged = lowest(part.scores, part.vectors, count)
            continue
        scores = np.concatenate([merged.scores, part.scores])
        vectors = np.concatenate([merged.vectors, part.vectors])
        merged = lowest(scores, vectors, count)
    if merged is None:
        raise ValueError("no partitions to seed from")
    return merged


def ivf_over(centroids: np.ndarray, nprobe: int = NPROBE) -> faiss.Index:
    """An inner-product inverted-file index over ``centroids`` (``~sqrt(k)`` lists; seeded, so deterministic)."""
    k, dim = centroids.shape
    nlist = max(1, int(math.sqrt(k)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = 1234
    index.cp.min_points_per_centroid = 1
    index.train(np.ascontiguousarray(centroids, dtype=np.float32))
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    index.nprobe = min(nprobe, nlist)
    return index


class Assigner:
    """Nearest centroid (largest inner product) of unit vectors: exact up to ``exact_max_k`` centroids, else
    through :func:`ivf_over` (built once per assigner). On a worker whose faiss has GPUs both run there
    (:func:`curate.faiss_gpu.on_gpus`); on the CPU the exact path is one matrix product a block of rows."""

    def __init__(self, centroids: np.ndarray, exact_max_k: int = EXACT_MAX_K, nprobe: int = NPROBE,
                 ivf: faiss.Index | None = None) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.index = None
        if len(self.centroids) > exact_max_k:  # ``ivf``: the same index, built once by the caller
            self.index = on_gpus(ivf if ivf is not None else ivf_over(self.centroids, nprobe), "ivf")
        elif gpu_count() > 0:
            flat = faiss.IndexFlatIP(self.centroids.shape[1])
            flat.add(self.centroids)
            self.index = on_gpus(flat, "flat")

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(similarity, label) of each row of ``points`` (unit vectors)."""
        sims = np.empty(len(points), dtype=np.float32)
        labels = np.empty(len(points), dtype=np.int64)
        for start in range(0, len(points), CHUNK):
            block = np.ascontiguousarray(points[start : start + CHUNK], dtype=np.float32)
            if self.index is None:
                scores = block @ self.centroids.T
                best = np.argmax(scores, axis=1)
                sims[start : start + len(block)] = scores[np.arange(len(block)), best]
                labels[start : start + len(block)] = best
            else:
                found, ids = self.index.search(block, 1)
                sims[start : start + len(block)] = found[:, 0]
                labels[start : start + len(block)] = ids[:, 0]
        return sims, labels


def nearest(points: np.ndarray, centroids: np.ndarray, exact_max_k: int = EXACT_MAX_K) -> tuple[np.ndarray, np.ndarray]:
    """(similarity, label) of each unit vector's nearest centroid; see :class:`Assigner`."""
    return Assigner(centroids, exact_max_k)(points)


@dataclass(frozen=True)
class Sums:
    """Per-cluster fixed-point vector sums ``[k, d]`` (int64), counts ``[k]`` and the summed similarity."""

    sums: np.ndarray
    counts: np.ndarray
    similarity: float

    def __add__(self, other: "Sums") -> "Sums":
        return Sums(self.sums + other.sums, self.counts + other.counts, self.similarity + other.similarity)


def cluster_sums(points: np.ndarray, labels: np.ndarray, sims: np.ndarray, k: int) -> Sums:
    """:class:`Sums` of ``points`` grouped by ``labels`` (exact: fixed point, added by a sparse product)."""
    points = np.asarray(points, dtype=np.float32)
    if not len(labels):
        return Sums(np.zeros((k, points.shape[1] if points.ndim == 2 else 0), np.int64), np.zeros(k, np.int64), 0.0)
    total = np.zeros((k, points.shape[1]), np.float64)
    for start in range(0, len(labels), SUM_CHUNK):  # a block small enough to stay in cache while converted
        fixed = points[start:start + SUM_CHUNK] * np.float32(SCALE)  # exact (a power of two), then rounded to
        np.rint(fixed, out=fixed)  # integers, which float64 adds exactly whatever the order
        rows = labels[start:start + SUM_CHUNK]
        membership = scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(k, len(rows)))
        total += membership @ fixed.astype(np.float64)
    sums = total.astype(np.int64)
    counts = np.bincount(labels, minlength=k).astype(np.int64)
    return Sums(sums, counts, float(np.sum(sims, dtype=np.float64)))


def partial_sums(points: np.ndarray, assigner: Assigner, keep: np.ndarray | None = None) -> Sums:
    """One partition's share of a Lloyd iteration: its unit vectors (those where ``keep``) summed by nearest centroid."""
    if keep is not None:
        points = points[keep]
    sims, labels = assigner(points)
    return cluster_sums(points, labels, sims, len(assigner.centroids))


SPLIT = 1.0 / 1024
"""Relative nudge that splits a cluster in two (faiss's ``EPS`` for empty clusters)."""


def update(total: Sums, previous: np.ndarray) -> np.ndarray:
    """New unit centroids from the summed :class:`Sums`.

    An empty cluster takes over half of the largest cluster, as faiss does: the two get that centroid
    nudged apart by :data:`SPLIT` (in opposite directions on alternate dimensions). faiss picks the cluster
    to split at random; here it is the largest (lowest index among equals), so the update is deterministic.
    """
    centroids = np.array(previous, dtype=np.float32, copy=True)
    filled = total.counts > 0
    centroids[filled] = unit(total.sums[filled].astype(np.float64) / SCALE)
    counts = total.counts.astype(np.float64)
    nudge = np.where(np.arange(centroids.shape[1]) % 2 == 0, SPLIT, -SPLIT).astype(np.float32)
    for empty in np.flatnonzero(~filled):
        big = int(np.argmax(counts))
        if counts[big] <= 1:
            break
        centroids[empty] = centroids[big] * (1 + nudge)
        centroids[big] = centroids[big] * (1 - nudge)
        counts[empty] = counts[big] = counts[big] / 2
    return unit(centroids)


def _ranked(labels: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs ordered by label, most similar first within a label: the order, its labels and each pair's rank
    in its cluster (0: the most similar)."""
    order = np.lexsort((-sims, labels))
    sorted_labels = labels[order]
    return order, sorted_labels, np.arange(len(order)) - np.searchsorted(sorted_labels, sorted_labels)


def sample_thresholds(labels: np.ndarray, sims: np.ndarray, k: int, per_cluster: int) -> np.ndarray:
    """Per cluster, the similarity of its ``per_cluster``-th nearest member (``-inf`` when it has fewer):
    the resampling step keeps the vectors at least that similar to their centroid."""
    thresholds = np.full(k, -np.inf, dtype=np.float32)
    order, sorted_labels, rank = _ranked(labels, sims)
    last = rank == per_cluster - 1
    thresholds[sorted_labels[last]] = sims[order][last]
    return thresholds


def most_similar(labels: np.ndarray, sims: np.ndarray, per_cluster: int) -> np.ndarray:
    """Indices of each cluster's ``per_cluster`` most similar pairs (all of a smaller cluster's): the pairs
    :func:`sample_thresholds` needs, so pairs gathered piece by piece can be cut down to them as they come."""
    order, _, rank = _ranked(labels, sims)
    return order[rank < per_cluster]
