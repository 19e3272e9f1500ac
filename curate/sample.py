"""Retrieval-based selection of pool images close to a curated set (DINOv2, Sec. 3 and Appendix A).

Two retrieval modes from the paper: *sample-based* for a large curated set — every curated image
retrieves its ``n`` nearest pool images — and *cluster-based* for a small one — the pool is clustered
with k-means and ``m`` images are sampled from each cluster nearest to at least ``min_hits`` curated
images (the paper: more than 3). Pool images less similar than ``min_similarity`` to the curated image
that retrieved them are dropped.

Example::

    chosen = retrieve_nearest(curated, pool, per_query=4, min_similarity=0.5)
    chosen.pool_index, chosen.query_index, chosen.similarity
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa

from dinolab.curate.dedup import IndexKind, nearest_neighbors, normalized
from dinolab.curate.kmeans import ClusterTree, balanced_sample, tree_from_levels
from dinolab.schemas.config import SampleConfig
from dinolab.schemas.tables import SELECTION, utc_now


@dataclass(frozen=True)
class Selection:
    """Selected pool rows (sorted) with why each was taken; -1 / nan where a field does not apply."""

    method: str
    pool_index: np.ndarray
    query_index: np.ndarray  # curated image that retrieved it
    cluster: np.ndarray  # level-1 pool cluster it was sampled from
    similarity: np.ndarray  # cosine similarity to the retrieving curated image

    def __len__(self) -> int:
        return len(self.pool_index)


def _best_query_per_pool_item(
    pool_rows: np.ndarray, query_rows: np.ndarray, similarity: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reduce (pool, query, similarity) hits to one per pool row: the most similar query."""
    order = np.lexsort((-similarity, pool_rows))
    pool_sorted = pool_rows[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = pool_sorted[1:] != pool_sorted[:-1]
    chosen = order[first]
    return pool_rows[chosen], query_rows[chosen], similarity[chosen]


def retrieve_nearest(
    curated: np.ndarray,
    pool: np.ndarray,
    per_query: int = 4,
    min_similarity: float = -1.0,
    kind: IndexKind = "auto",
) -> Selection:
    """Sample-based retrieval: the ``per_query`` nearest pool images of every curated image."""
    sims, ids = nearest_neighbors(pool, curated, per_query, kind)
    queries = np.repeat(np.arange(len(curated)), ids.shape[1]).reshape(ids.shape)
    hit = (ids >= 0) & (sims >= min_similarity)
    rows, query, similarity = _best_query_per_pool_item(ids[hit], queries[hit], sims[hit])
    return Selection("neighbours", rows, query, np.full(len(rows), -1), similarity.astype(np.float32))


def retrieve_from_clusters(
    curated: np.ndarray,
    pool: np.ndarray,
    pool_labels: np.ndarray,
    centroids: np.ndarray,
    per_cluster: int = 100,
    min_similarity: float = -1.0,
    seed: int = 0,
    min_hits: int = 1,
) -> Selection:
    """Cluster-based retrieval: ``per_cluster`` random pool images from each cluster that is the nearest
    cluster of at least ``min_hits`` curated images.

    A cluster hit by several curated images is sampled once; each sampled image records the curated
    image among those hitting its cluster that is most similar to it. ``min_hits`` > 1 leaves out
    clusters that only a stray curated image lands in: mixed clusters at the edge of the curated domain.
    """
    rng = np.random.default_rng(seed)
    curated_unit, pool_unit = normalized(curated), normalized(pool)
    nearest_cluster = np.argmax(curated_unit @ normalized(centroids).T, axis=1)
    hit_clusters, hit_counts = np.unique(nearest_cluster, return_counts=True)
    rows, queries, clusters, similarities = [], [], [], []
    for cluster in hit_clusters[hit_counts >= min_hits]:
        hitting = np.flatnonzero(nearest_cluster == cluster)
        members = np.flatnonzero(pool_labels == cluster)
        if len(members) == 0:
            continue
        member_sims = pool_unit[members] @ curated_unit[hitting].T  # [members, hitting queries]
        best = np.argmax(member_sims, axis=1)
        best_sim = member_sims[np.arange(len(members)), best]
        eligible = np.flatnonzero(best_sim >= min_similarity)
        take = rng.choice(eligible, size=min(per_cluster, len(eligible)), replace=False)
        rows.append(members[take])
        queries.append(hitting[best[take]])
        clusters.append(np.full(len(take), cluster))
        similarities.append(best_sim[take])
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return Selection("clusters", empty, empty, empty, np.zeros(0, dtype=np.float32))
    rows_all = np.concatenate(rows)
    order = np.argsort(rows_all)
    return Selection(
        "clusters",
        rows_all[order],
        np.concatenate(queries)[order],
        np.concatenate(clusters)[order],
        np.concatenate(similarities)[order].astype(np.float32),
    )


def select_balanced(tree: ClusterTree, count: int, seed: int = 0) -> Selection:
    """Curated-set-free selection: :func:`balanced_sample` over the pool's cluster tree (Vo et al. 2024)."""
    rows = balanced_sample(tree, count, seed)
    return Selection(
        "balanced", rows, np.full(len(rows), -1), tree.labels(1)[rows], np.full(len(rows), np.nan, np.float32)
    )


def selection_table(
    pool_keys: Sequence[str],
    pool_uris: Sequence[str],
    pool_vectors: np.ndarray,
    pool_levels: np.ndarray,
    curated_keys: Sequence[str],
    curated_vectors: np.ndarray,
    config: SampleConfig,
    selected_at: datetime | None = None,
) -> pa.Table:
    """The ``selection`` table: which deduplicated pool images are kept for training, and why.

    ``method=auto`` retrieves with the curated images as queries when there are any (the paper's
    sample-based retrieval, ``neighbours``, or cluster-based, ``clusters``) and otherwise samples the
    cluster tree evenly (``balanced``, ``config.target`` images, default half the pool); ``all`` keeps
    every deduplicated image. ``pool_levels`` is ``[n, L]`` from the ``clusters`` table; ``selected_at``
    (default: now, UTC) fills the column of that name.
    """
    method = config.method
    if method == "auto":
        method = "retrieval" if len(curated_keys) else "balanced"
    if method == "retrieval" and not len(curated_keys):
        raise ValueError("sample.method=retrieval needs at least one --curated set")
    labels = np.asarray(pool_levels, dtype=np.int64)[:, 0] if len(pool_keys) else np.zeros(0, np.int64)
    if method == "all":
        rows = np.arange(len(pool_keys))
        selection = Selection("all", rows, np.full(len(rows), -1), labels[rows], np.full(len(rows), np.nan, np.float32))
    elif method == "balanced":
        target = config.target or (len(pool_keys) + 1) // 2
        selection = select_balanced(tree_from_levels(pool_levels), target, config.seed)
    elif config.retrieval == "clusters":
        centroids = _centroids(pool_vectors, labels)
        selection = retrieve_from_clusters(
            curated_vectors, pool_vectors, labels, centroids, config.per_cluster, config.min_similarity, config.seed,
            config.min_cluster_hits,
        )
    else:
        selection = retrieve_nearest(curated_vectors, pool_vectors, config.per_query, config.min_similarity)
    rows = selection.pool_index
    name = "retrieval:" + config.retrieval if method == "retrieval" else method
    return pa.table(
        {
            "key": [pool_keys[i] for i in rows],
            "uri": [pool_uris[i] for i in rows],
            "method": [name] * len(rows),
            "query_key": [curated_keys[q] if q >= 0 else None for q in selection.query_index],
            "cluster": labels[rows].astype(np.int32),
            "similarity": [None if np.isnan(s) else float(s) for s in selection.similarity],
            "selected_at": [selected_at or utc_now()] * len(rows),
        },
        schema=SELECTION.schema,
    )


def _centroids(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean unit vector of each level-1 cluster (the table keeps labels, not centroids)."""
    unit = normalized(vectors)
    sums = np.zeros((int(labels.max()) + 1 if len(labels) else 1, unit.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, unit)
    return sums.astype(np.float32)
