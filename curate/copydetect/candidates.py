"""Candidate pairs for verification: local-descriptor votes through faiss, or a global descriptor's kNN.

Votes (the default): every RootSIFT descriptor of every image goes into one faiss index; each image's
descriptors (and its mirror's) look up their ``neighbours`` nearest, and each other image found gets one
vote per query descriptor. An image's candidates are the ``max_candidates`` images with most votes (at
least ``min_votes``). Crops, rotations, flips, frames and overlays keep a share of an image's keypoints,
so a copy collects votes where a global descriptor would move away. Exact (flat) search up to
:data:`FLAT_LIMIT` descriptors, IVF above it::

    first, second, votes = vote_candidates(features, features)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import faiss
import numpy as np

from dinolab.curate.copydetect.local import DESCRIPTOR_DIM, LocalFeatures

FLAT_LIMIT = 20_000
MAX_DISTANCE = 0.55
"""RootSIFT L2 distance above which a neighbour casts no vote (unrelated descriptors are ~0.8-1.1 apart)."""
QUERY_BATCH = 65_536


def _stack(features: Sequence[LocalFeatures], mirror: bool) -> tuple[np.ndarray, np.ndarray]:
    chosen = [(f.mirror if mirror and f.mirror is not None else f) for f in features]
    if mirror:
        chosen = [c for f, c in zip(features, chosen)]
    owners = np.concatenate([np.full(len(c), i, np.int64) for i, c in enumerate(chosen)] or [np.zeros(0, np.int64)])
    vectors = np.concatenate([c.descriptors for c in chosen] or [np.zeros((0, DESCRIPTOR_DIM), np.float32)])
    return np.ascontiguousarray(vectors, dtype=np.float32), owners


def descriptor_index(vectors: np.ndarray, nprobe: int = 16, seed: int = 0) -> faiss.Index:
    """Flat L2 index, or IVF (``4·sqrt(n)`` lists) above :data:`FLAT_LIMIT` vectors."""
    if len(vectors) <= FLAT_LIMIT:
        index: faiss.Index = faiss.IndexFlatL2(vectors.shape[1])
    else:
        nlist = int(4 * math.sqrt(len(vectors)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(vectors.shape[1]), vectors.shape[1], nlist)
        sample = np.random.default_rng(seed).permutation(len(vectors))[: 40 * nlist]
        index.train(vectors[np.sort(sample)])
        index.nprobe = nprobe
    index.add(vectors)
    return index


def descriptor_neighbours(queries: Sequence[LocalFeatures], database: Sequence[LocalFeatures], neighbours: int = 5
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each query descriptor's (and its mirror's) ``neighbours`` nearest database descriptors within
    :data:`MAX_DISTANCE`: ``(descriptor, query image, database image, database descriptor, squared distance)``.
    Query descriptors are numbered as stacked, the mirrors' after all the others; database descriptors as
    stacked (image by image)."""
    db_vectors, db_owner = _stack(database, mirror=False)
    found = [[] for _ in range(5)]
    if len(db_vectors) and len(queries):
        index = descriptor_index(db_vectors)
        offset = 0
        for mirror in (False, True):
            q_vectors, q_owner = _stack(queries, mirror=mirror)
            for start in range(0, len(q_vectors), QUERY_BATCH):
                distances, ids = index.search(q_vectors[start : start + QUERY_BATCH], neighbours)
                rows = np.repeat(np.arange(start, start + len(ids)), ids.shape[1])
                ids, distances = ids.ravel(), distances.ravel()
                ok = (ids >= 0) & (np.sqrt(np.maximum(distances, 0)) <= MAX_DISTANCE)
                for column, values in zip(found, (rows[ok] + offset, q_owner[rows[ok]], db_owner[ids[ok]],
                                                  ids[ok].astype(np.int64), distances[ok])):
                    column.append(values)
            offset = len(q_vectors)  # the mirrors' descriptors are numbered after the image's own
    kinds = (np.int64,) * 4 + (np.float32,)
    return tuple(np.concatenate(column) if column else np.zeros(0, kind) for column, kind in zip(found, kinds))


def vote_pairs(descriptor: np.ndarray, query: np.ndarray, other: np.ndarray, same_set: bool = True,
               max_candidates: int = 16, min_votes: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs from the neighbours of :func:`descriptor_neighbours` (``descriptor``, its image
    ``query``, the database image ``other``): one vote per (query descriptor, database image); see
    :func:`vote_candidates`."""
    empty = np.zeros(0, np.int64)
    if same_set:
        keep = query != other
        descriptor, query, other = descriptor[keep], query[keep], other[keep]
    if not len(descriptor):
        return empty, empty, empty
    pairs = np.unique(np.stack([descriptor, query, other], axis=1), axis=0)[:, 1:]
    (unique, votes) = np.unique(pairs, axis=0, return_counts=True)
    query, other = unique[:, 0], unique[:, 1]
    keep = votes >= min_votes
    query, other, votes = query[keep], other[keep], votes[keep]
    order = np.lexsort((-votes, query))  # per query image, most votes first
    query, other, votes = query[order], other[order], votes[order]
    rank = np.arange(len(query)) - np.searchsorted(query, query)
    keep = rank < max_candidates
    query, other, votes = query[keep], other[keep], votes[keep]
    if not same_set:
        return query, other, votes
    first, second = np.minimum(query, other), np.maximum(query, other)
    order = np.lexsort((-votes, second, first))
    first, second, votes = first[order], second[order], votes[order]
    unique_rows = np.ones(len(first), bool)
    unique_rows[1:] = (first[1:] != first[:-1]) | (second[1:] != second[:-1])
    return first[unique_rows], second[unique_rows], votes[unique_rows]


def vote_candidates(queries: Sequence[LocalFeatures], database: Sequence[LocalFeatures], same_set: bool = True,
                    neighbours: int = 5, max_candidates: int = 16, min_votes: int = 3
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(query image, database image, votes)`` candidate pairs, best first per query image.

    ``same_set``: queries and database are one set (self pairs dropped; each unordered pair once, as
    ``first < second``, with the larger of its two vote counts).
    """
    descriptor, query, other, _, _ = descriptor_neighbours(queries, database, neighbours)
    return vote_pairs(descriptor, query, other, same_set, max_candidates, min_votes)


def knn_candidates(descriptors: np.ndarray, k: int, threshold: float, queries: np.ndarray | None = None,
                   same_set: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs among each row's ``k`` nearest by inner product (descriptors already normalised / score-normalised)
    scoring ``>= threshold``: ``(query row, database row, score)``; a self-search drops self pairs and
    returns each unordered pair once (``first < second``). ``same_set=True`` with ``queries``: the query rows
    are the database rows carrying extra columns (score normalisation)."""
    from dinolab.curate.dedup import build_index

    same = queries is None if same_set is None else same_set
    queries = descriptors if queries is None else queries
    empty = np.zeros(0, np.int64)
    if not len(descriptors) or not len(queries):
        return empty, empty, np.zeros(0, np.float32)
    index = faiss.IndexFlatIP(descriptors.shape[1]) if len(descriptors) <= 100_000 else build_index(
        np.ascontiguousarray(descriptors, np.float32), "ivf")
    if index.ntotal == 0:
        index.add(np.ascontiguousarray(descriptors, np.float32))
    k = min(k + int(same), len(descriptors))
    scores, ids = index.search(np.ascontiguousarray(queries, np.float32), k)
    rows = np.repeat(np.arange(len(queries)), k).reshape(ids.shape)
    ok = (ids >= 0) & (scores >= threshold)
    if same:
        ok &= ids != rows
    first, second, score = rows[ok], ids[ok].astype(np.int64), scores[ok]
    if same:
        first, second = np.minimum(first, second), np.maximum(first, second)
        _, unique = np.unique(first * len(descriptors) + second, return_index=True)
        first, second, score = first[unique], second[unique], score[unique]
    return first.astype(np.int64), second, score.astype(np.float32)
