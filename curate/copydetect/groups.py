"""Duplicate groups: union-find over verified links, one image kept per group, group-wide decontamination.

Before the union, :func:`structural_similarity` scores every link by how many neighbours its two images
share (SCAN's structural similarity, Xu et al. 2007): inside a group of copies most images verify
against most others, while a false link between two groups (two screenshots of different photos in one
frame) joins images whose other neighbours differ. Links below a threshold are dropped, so one false
verification does not merge two groups of six or more (a bridge between two k-cliques scores 2 / (k + 1)).

The union-find is array-based (path halving over numpy arrays), linear in links, so 10^8 images are
memory-bound (two int64 arrays), not time-bound. Keep rule: the largest resolution, then the smallest
key. Decontamination (DINOv2 Sec. 3): a group holding any image linked to an evaluation image is removed
whole::

    uf = UnionFind(5); uf.union(np.array([0, 3]), np.array([1, 4]))
    labels = uf.labels()                 # [0, 0, 2, 3, 3]
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sparse


class UnionFind:
    """Disjoint sets over rows ``0..n-1``."""

    def __init__(self, count: int) -> None:
        self.parent = np.arange(count, dtype=np.int64)

    def find(self, row: int) -> int:
        parent = self.parent
        while parent[row] != row:
            parent[row] = parent[parent[row]]  # path halving
            row = parent[row]
        return int(row)

    def union(self, first: np.ndarray, second: np.ndarray) -> None:
        """Join the sets of ``first[i]`` and ``second[i]`` for every ``i`` (the smaller root becomes the root)."""
        for a, b in zip(np.asarray(first, np.int64).tolist(), np.asarray(second, np.int64).tolist()):
            root_a, root_b = self.find(a), self.find(b)
            if root_a != root_b:
                self.parent[max(root_a, root_b)] = min(root_a, root_b)

    def labels(self) -> np.ndarray:
        """The root of every row (the smallest row of its set)."""
        parent = self.parent
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return parent.copy()
            parent[:] = grand


def keep_largest(labels: np.ndarray, keys: list[str], pixels: np.ndarray) -> np.ndarray:
    """Boolean mask of the kept row of each group: most pixels, ties broken by the smallest key."""
    key_rank = np.argsort(np.argsort(np.array(keys, dtype=object), kind="stable"), kind="stable")
    order = np.lexsort((key_rank, -np.asarray(pixels, np.int64), labels))
    first = np.ones(len(order), dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    keep = np.zeros(len(labels), dtype=bool)
    keep[order[first]] = True
    return keep


def leaking_rows(labels: np.ndarray, linked_rows: np.ndarray) -> np.ndarray:
    """Mask of every row whose group holds one of ``linked_rows`` (rows linked to an evaluation image)."""
    return np.isin(labels, np.unique(labels[np.asarray(linked_rows, np.int64)]))


def structural_similarity(first: np.ndarray, second: np.ndarray, count: int) -> np.ndarray:
    """Per link ``(first[i], second[i])`` of a graph on ``count`` rows: shared closed neighbourhood over the
    geometric mean of the two closed neighbourhood sizes, ``|N[a] ∩ N[b]| / sqrt(|N[a]| |N[b]|)`` (1 for an
    isolated pair or a clique)."""
    first, second = np.asarray(first, np.int64), np.asarray(second, np.int64)
    if not len(first):
        return np.zeros(0, np.float64)
    ones = np.ones(len(first), np.float64)
    adjacency = sparse.coo_matrix((ones, (first, second)), shape=(count, count)).tocsr()
    adjacency = ((adjacency + adjacency.T + sparse.identity(count, format="csr")) > 0).astype(np.float64).tocsr()
    size = np.asarray(adjacency.sum(axis=1)).ravel()
    shared = np.asarray(adjacency[first].multiply(adjacency[second]).sum(axis=1)).ravel()
    return shared / np.sqrt(size[first] * size[second])


def structural_links(first: np.ndarray, second: np.ndarray, count: int, min_similarity: float) -> np.ndarray:
    """Mask of the links to keep: structural similarity ``>= min_similarity``, or a link to an image with no
    other link (a leaf joins one image to a group and cannot chain two groups)."""
    first, second = np.asarray(first, np.int64), np.asarray(second, np.int64)
    if min_similarity <= 0 or not len(first):
        return np.ones(len(first), dtype=bool)
    degree = np.bincount(np.concatenate([first, second]), minlength=count)
    leaf = np.minimum(degree[first], degree[second]) <= 1
    return leaf | (structural_similarity(first, second, count) >= min_similarity)
