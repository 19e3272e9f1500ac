"""Connected components over integer ids with numpy: a union-find fed link batches, no Python object per image.

The forest is one ``int64`` parent per id; a batch of links is joined by rounds of vectorised finds (pointer
jumping) and hooks (every differing pair's larger root points at the smaller one), until each link's two ids
share a root. Roots are the smallest id of their component whatever the order links arrive in, so labels are
deterministic across batchings and task orders::

    parent = forest(5)
    join(parent, np.array([0, 3]), np.array([1, 4]))
    join(parent, np.array([1]), np.array([4]))
    labels(parent)                     # [0, 0, 2, 0, 0]
"""

from __future__ import annotations

import numpy as np


def forest(count: int) -> np.ndarray:
    """``count`` singleton components: every id its own root."""
    return np.arange(count, dtype=np.int64)


def find(parent: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Roots of ``ids``; the visited ids are pointed straight at their roots (path compression)."""
    ids = np.asarray(ids, dtype=np.int64)
    roots = parent[ids]
    while True:
        above = parent[roots]
        if np.array_equal(above, roots):
            break
        roots = above
    parent[ids] = roots
    return roots


def join(parent: np.ndarray, first: np.ndarray, second: np.ndarray) -> None:
    """Merge the components of ``first[i]`` and ``second[i]`` for every ``i`` (in place)."""
    first, second = np.asarray(first, np.int64), np.asarray(second, np.int64)
    while len(first):
        root_a, root_b = find(parent, first), find(parent, second)
        apart = root_a != root_b
        if not apart.any():
            return
        first, second = first[apart], second[apart]
        low, high = np.minimum(root_a[apart], root_b[apart]), np.maximum(root_a[apart], root_b[apart])
        np.minimum.at(parent, high, low)  # roots only: several hooks on one root keep the smallest


def labels(parent: np.ndarray) -> np.ndarray:
    """The root (smallest id) of every id's component; ``parent`` is fully compressed on the way."""
    while True:
        above = parent[parent]
        if np.array_equal(above, parent):
            return parent
        parent[:] = above


def best_per_component(roots: np.ndarray, ids: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Positions of the first row of each component in the order of ``keys`` (most significant first).

    ``roots[i]`` is row ``i``'s component; the result has one position per distinct root, sorted by root.
    """
    order = np.lexsort((ids, *reversed(keys), roots))
    first = np.ones(len(order), dtype=bool)
    first[1:] = roots[order][1:] != roots[order][:-1]
    return order[first]
