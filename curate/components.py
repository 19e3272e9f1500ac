"""Connected components over integer ids with numpy: a union-find fed link batches, no Python object per image.

The forest is one parent per id (``int32`` below 2^31 ids: 4 bytes an image); a batch of links is joined by
rounds of vectorised finds (pointer jumping) and hooks (every differing pair's larger root points at the
smaller one), until each link's two ids share a root. Roots are the smallest id of their component whatever the
order links arrive in, so labels are deterministic across batchings and task orders. A parent never exceeds its
id, which lets :func:`labels` and :func:`in_groups` work through the forest in chunks (no temporary as large
as the forest)::

    parent = forest(5)
    join(parent, np.array([0, 3]), np.array([1, 4]))
    join(parent, np.array([1]), np.array([4]))
    labels(parent)                     # [0, 0, 2, 0, 0]
"""

from __future__ import annotations

import numpy as np

CHUNK = 1 << 22
"""Ids :func:`labels` and :func:`in_groups` handle at once: bounds their temporaries."""


def forest(count: int) -> np.ndarray:
    """``count`` singleton components: every id its own root (``int32`` ids when they fit)."""
    return np.arange(count, dtype=np.int32 if count < 2**31 else np.int64)


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
    """The root (smallest id) of every id's component: ``parent`` itself, fully compressed chunk by chunk (the
    ids before a chunk already point at roots, so a chunk's pointers settle within it)."""
    for start in range(0, len(parent), CHUNK):
        chunk = parent[start:start + CHUNK]
        while True:
            above = parent[chunk]
            if np.array_equal(above, chunk):
                break
            chunk[:] = above
    return parent


def in_groups(roots: np.ndarray) -> np.ndarray:
    """Whether each id's component has two or more ids (``roots`` from :func:`labels`; one byte an id)."""
    grouped = np.zeros(len(roots), dtype=bool)
    for start in range(0, len(roots), CHUNK):
        chunk = roots[start:start + CHUNK]
        moved = chunk != np.arange(start, start + len(chunk), dtype=chunk.dtype)
        grouped[start:start + len(chunk)] |= moved
        grouped[chunk[moved]] = True
    return grouped


def component_count(roots: np.ndarray) -> int:
    """Components among ``roots`` (ids that are their own root)."""
    return sum(int(np.count_nonzero(roots[start:start + CHUNK]
                                    == np.arange(start, min(start + CHUNK, len(roots)), dtype=roots.dtype)))
               for start in range(0, len(roots), CHUNK))


def best_per_component(roots: np.ndarray, ids: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Positions of the first row of each component in the order of ``keys`` (most significant first).

    ``roots[i]`` is row ``i``'s component; the result has one position per distinct root, sorted by root.
    """
    order = np.lexsort((ids, *reversed(keys), roots))
    first = np.ones(len(order), dtype=bool)
    first[1:] = roots[order][1:] != roots[order][:-1]
    return order[first]
