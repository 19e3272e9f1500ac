"""Duplicate groups: union-find over verified links, one image kept per group, group-wide decontamination.

The union-find is array-based (path halving over numpy arrays), linear in links, so 10^8 images are
memory-bound (two int64 arrays), not time-bound. Keep rule: the largest resolution, then the smallest
key. Decontamination (DINOv2 Sec. 3): a group holding any image linked to an evaluation image is removed
whole::

    uf = UnionFind(5); uf.union(np.array([0, 3]), np.array([1, 4]))
    labels = uf.labels()                 # [0, 0, 2, 3, 3]
"""

from __future__ import annotations

import numpy as np


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
