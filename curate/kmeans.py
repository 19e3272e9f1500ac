"""Hierarchical k-means with resampling and balanced sampling (Vo et al. 2024, Sec. 4 and Alg. 1).

Level 1 clusters the embeddings, level ``l + 1`` clusters the centroids of level ``l``. After each
k-means, ``resampling_steps`` refinements move the centroids away from dense regions: take the
``samples_per_cluster`` points nearest each centroid, re-run k-means on that union (started from the
current centroids), and reassign every point. Balanced sampling then spends an equal share of the
budget on every top-level cluster and recursively on every child cluster down to the level-1 clusters,
where images are drawn uniformly at random; a cluster with fewer images than its share gives its
spare budget to its siblings.

Example::

    tree = hierarchical_kmeans(embeddings, ks=[100, 20, 5], seed=0)
    tree.labels(1).shape  # (n,): level-1 cluster of each image
    chosen = balanced_sample(tree, count=1000, seed=0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa

from dinolab.schemas.config import ClusterConfig
from dinolab.schemas.tables import CLUSTERS

MAX_POINTS_PER_CENTROID = 256
"""faiss trains each k-means on at most this many points a centroid (a random subsample)."""
DEFAULT_SHRINK = (50, 10, 5, 5)  # items per cluster at levels 1, 2, 3, 4+ for default_ks


@dataclass(frozen=True)
class ClusterTree:
    """``centroids[l]`` is ``[k_{l+1}, D]``; ``parents[0]`` maps each point to its level-1 cluster and
    ``parents[l]`` each level-``l`` cluster to its level-``l+1`` cluster."""

    centroids: list[np.ndarray]
    parents: list[np.ndarray]

    @property
    def num_levels(self) -> int:
        return len(self.centroids)

    def labels(self, level: int) -> np.ndarray:
        """Cluster of each point at ``level`` (1 = finest)."""
        if not 1 <= level <= self.num_levels:
            raise ValueError(f"level must be in 1..{self.num_levels}, got {level}")
        labels = self.parents[0]
        for parent in self.parents[1:level]:
            labels = parent[labels]
        return labels

    def sizes(self, level: int) -> np.ndarray:
        """Number of points in each cluster of ``level``."""
        return np.bincount(self.labels(level), minlength=len(self.centroids[level - 1]))


def default_ks(count: int, levels: int) -> list[int]:
    """Cluster counts shrinking by :data:`DEFAULT_SHRINK` per level, at least 1 and below the item count."""
    ks, items = [], count
    for level in range(levels):
        shrink = DEFAULT_SHRINK[min(level, len(DEFAULT_SHRINK) - 1)]
        items = max(1, math.ceil(items / shrink))
        ks.append(items)
    return ks


def kmeans(
    points: np.ndarray,
    k: int,
    niter: int = 20,
    seed: int = 0,
    init_centroids: np.ndarray | None = None,
    spherical: bool = True,
) -> np.ndarray:
    """Centroids ``[k, D]`` from faiss k-means (on a GPU when faiss has one)."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    k = min(k, points.shape[0])
    model = faiss.Kmeans(
        points.shape[1],
        k,
        niter=niter,
        seed=seed,
        spherical=spherical,
        gpu=faiss.get_num_gpus() > 0,
        min_points_per_centroid=1,
        max_points_per_centroid=MAX_POINTS_PER_CENTROID,
        verbose=False,
    )
    if init_centroids is not None:
        model.train(points, init_centroids=np.ascontiguousarray(init_centroids, dtype=np.float32))
    else:
        model.train(points)
    return model.centroids.copy()


def assign(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (L2) of each point: (squared distance, index)."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    distances, labels = index.search(np.ascontiguousarray(points, dtype=np.float32), 1)
    return distances[:, 0], labels[:, 0].astype(np.int64)


def resampled_kmeans(
    points: np.ndarray,
    k: int,
    niter: int = 20,
    resampling_steps: int = 0,
    samples_per_cluster: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """k-means followed by ``resampling_steps`` refinements on the points nearest each centroid.

    Returns (centroids, label of each point). ``samples_per_cluster`` defaults to the mean cluster size.
    """
    centroids = kmeans(points, k, niter, seed)
    distances, labels = assign(points, centroids)
    per_cluster = samples_per_cluster or max(1, points.shape[0] // len(centroids))
    for step in range(resampling_steps):
        order = np.lexsort((distances, labels))  # by cluster, nearest first
        rank_in_cluster = np.arange(len(order)) - np.searchsorted(labels[order], labels[order])
        sample = order[rank_in_cluster < per_cluster]
        centroids = kmeans(points[sample], len(centroids), niter, seed + step + 1, centroids)
        distances, labels = assign(points, centroids)
    return centroids, labels


def hierarchical_kmeans(
    embeddings: np.ndarray,
    ks: Sequence[int],
    niter: int = 20,
    resampling_steps: int = 0,
    samples_per_cluster: Sequence[int] | None = None,
    seed: int = 0,
) -> ClusterTree:
    """Cluster ``embeddings`` (L2-normalised first), then the centroids, level after level."""
    if len(ks) == 0:
        raise ValueError("need at least one level")
    points = np.ascontiguousarray(embeddings, dtype=np.float32).copy()
    faiss.normalize_L2(points)
    centroids_per_level, parents = [], []
    for level, k in enumerate(ks):
        per_cluster = samples_per_cluster[level] if samples_per_cluster else None
        centroids, labels = resampled_kmeans(
            points, min(k, len(points)), niter, resampling_steps, per_cluster, seed + 1000 * level
        )
        centroids_per_level.append(centroids)
        parents.append(labels)
        points = centroids
    return ClusterTree(centroids_per_level, parents)


def allocate_evenly(capacities: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``total`` as evenly as possible over bins holding at most ``capacities`` (water-filling).

    Bins too small for their share are filled and the rest is shared again among the others; the
    final remainder (fewer units than open bins) goes one each to randomly chosen open bins.
    """
    capacities = np.asarray(capacities, dtype=np.int64)
    allocation = np.zeros_like(capacities)
    remaining = min(int(total), int(capacities.sum()))
    while remaining > 0:
        open_bins = np.flatnonzero(allocation < capacities)
        share = remaining // len(open_bins)
        if share == 0:
            allocation[rng.choice(open_bins, size=remaining, replace=False)] += 1
            break
        added = np.minimum(share, capacities[open_bins] - allocation[open_bins])
        allocation[open_bins] += added
        remaining -= int(added.sum())
    return allocation


def members(labels: np.ndarray, count: int) -> list[np.ndarray]:
    """Ascending indices of each label ``0..count-1``: one stable sort, not one scan of ``labels`` per label."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(count + 1))
    return [order[bounds[i] : bounds[i + 1]] for i in range(count)]


def cluster_budgets(parents: Sequence[np.ndarray], sizes: np.ndarray, counts: Sequence[int], count: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Images to draw from each level-1 cluster: ``count`` spread evenly over the top level, then each
    cluster's share over its children, down to level 1.

    ``sizes`` is the number of images of each level-1 cluster, ``parents[l]`` maps each level-``l + 1``
    cluster to its level-``l + 2`` cluster and ``counts[l]`` is the number of clusters at level ``l + 1``:
    all of it ``O(k)``, so a reduce over per-partition counts can call this.
    """
    top = len(counts)
    capacities = [np.asarray(sizes, dtype=np.int64)]
    for level in range(1, top):
        capacities.append(np.bincount(parents[level - 1], weights=capacities[-1], minlength=counts[level]).astype(np.int64))
    budget = allocate_evenly(capacities[top - 1], count, rng)
    for level in range(top - 1, 0, -1):  # give each level-(level+1) cluster's budget to its children
        parent = parents[level - 1]
        child_budget = np.zeros(len(parent), dtype=np.int64)
        children_of = members(parent, len(budget))
        for cluster in np.flatnonzero(budget):
            children = children_of[cluster]
            child_budget[children] = allocate_evenly(capacities[level - 1][children], budget[cluster], rng)
        budget = child_budget
    return budget


def balanced_sample(tree: ClusterTree, count: int, seed: int = 0) -> np.ndarray:
    """Indices of ``count`` points spread evenly over the cluster tree, top level down (sorted)."""
    rng = np.random.default_rng(seed)
    counts = [len(centroids) for centroids in tree.centroids]
    budget = cluster_budgets(tree.parents[1:], tree.sizes(1), counts, count, rng)
    points_of = members(tree.parents[0], len(budget))
    chosen = [rng.choice(points_of[cluster], size=budget[cluster], replace=False) for cluster in np.flatnonzero(budget)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def clusters_table(keys: Sequence[str], uris: Sequence[str], vectors: np.ndarray, config: ClusterConfig) -> pa.Table:
    """The ``clusters`` table: hierarchical k-means (``config.ks``, or sizes from the pool) of ``vectors``.

    ``levels`` lists each image's cluster at level 1 (finest) up to the top; ``cluster`` is level 1.
    """
    ks = list(config.ks) or default_ks(len(keys), config.levels)
    tree = hierarchical_kmeans(vectors, ks, config.niter, config.resampling_steps, seed=config.seed)
    levels = np.stack([tree.labels(level) for level in range(1, tree.num_levels + 1)], axis=1).astype(np.int32)
    return pa.table(
        {"key": list(keys), "uri": list(uris), "cluster": levels[:, 0], "levels": levels.tolist()},
        schema=CLUSTERS.schema,
    )


def tree_from_levels(levels: np.ndarray) -> ClusterTree:
    """The :class:`ClusterTree` a ``clusters`` table describes (``levels`` is ``[n, L]``, finest first).

    Centroids are not stored in the table; the tree carries empty ``[k, 0]`` placeholders, enough for
    :func:`balanced_sample`, which needs only the parent links and cluster sizes.
    """
    levels = np.asarray(levels, dtype=np.int64)
    counts = [int(levels[:, level].max()) + 1 if len(levels) else 1 for level in range(levels.shape[1])]
    parents = [levels[:, 0]]
    for level in range(1, levels.shape[1]):
        parent = np.zeros(counts[level - 1], dtype=np.int64)
        parent[levels[:, level - 1]] = levels[:, level]
        parents.append(parent)
    return ClusterTree([np.zeros((k, 0), dtype=np.float32) for k in counts], parents)
