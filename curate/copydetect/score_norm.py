"""SSCD score normalisation (Pizzi et al. 2022, Sec. 3.4) as one extra descriptor dimension.

ŝ(q, r) = s(q, r) − β · mean_{i = n..n_end} s(q, b_i), with b_i the query's i-th nearest neighbour in a
background set (β = 1, neighbours 1..3 by default: SSCD's "1.0[0,2]", zero-based). Appending
``−β · bias(q)`` to each query and ``1`` to each reference turns the rule into a plain inner product, so
faiss applies it inside the kNN search::

    bias = background_bias(queries, background)              # [n]
    q, r = with_bias(queries, bias), with_bias(references, None)
    scores = q @ r.T                                         # == queries @ references.T - bias[:, None]
"""

from __future__ import annotations

import faiss
import numpy as np


def background_bias(queries: np.ndarray, background: np.ndarray, first: int = 1, last: int = 3,
                    beta: float = 1.0, exclude_self: bool = False) -> np.ndarray:
    """``β ×`` the mean inner product of each query with its ``first..last``-th (1-based) background neighbours.

    ``exclude_self``: queries are rows of ``background`` (a self-search): each query's own row is skipped.
    """
    queries = np.ascontiguousarray(queries, np.float32)
    background = np.ascontiguousarray(background, np.float32)
    index = faiss.IndexFlatIP(background.shape[1])
    index.add(background)
    extra = int(exclude_self)
    k = min(last + extra, len(background))
    scores, ids = index.search(queries, k)
    if exclude_self:
        own = ids == np.arange(len(queries))[:, None]
        # drop each query's own row (or, if absent from the top k, its last neighbour)
        drop = np.where(own.any(axis=1), own.argmax(axis=1), k - 1)
        keep = np.ones_like(own)
        keep[np.arange(len(queries)), drop] = False
        scores = scores[keep].reshape(len(queries), k - 1)
    chosen = scores[:, first - 1 : last]
    return (beta * chosen.mean(axis=1)).astype(np.float32)


def with_bias(vectors: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``vectors`` with one more column: ``−bias`` for queries, ``1`` for references (``bias=None``)."""
    vectors = np.asarray(vectors, np.float32)
    column = np.ones((len(vectors), 1), np.float32) if bias is None else -np.asarray(bias, np.float32)[:, None]
    return np.ascontiguousarray(np.concatenate([vectors, column], axis=1))


def symmetric(vectors: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a self-search of one set: queries carry ``−bias``, references ``1`` (pairs scored from the query side)."""
    return with_bias(vectors, bias), with_bias(vectors, None)
