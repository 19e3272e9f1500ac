"""Retrieval metrics for a query / gallery split: recall@k and mean average precision.

A gallery item is *relevant* to a query when both carry the same label. Rankings sort the gallery by
decreasing similarity (ties keep gallery order).

* recall@k: percent of queries with at least one relevant item among their ``k`` best-ranked
  (the "Recall@K" of metric-learning benchmarks).
* AP of one query: mean over its relevant items of the precision at that item's rank; mAP averages AP
  over queries that have at least one relevant item.

Example::

    similarity = F.normalize(queries, dim=1) @ F.normalize(gallery, dim=1).T
    retrieval_metrics(similarity, query_labels, gallery_labels, ks=(1, 5))
    # {"recall@1": ..., "recall@5": ..., "mAP": ..., "queries": ..., "queries_without_relevant": ...}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def relevance_in_rank_order(similarity: Tensor, query_labels: Tensor, gallery_labels: Tensor) -> Tensor:
    """Bool ``[Q, G]``: whether the gallery item at each rank (best first) shares the query's label."""
    if similarity.shape != (query_labels.shape[0], gallery_labels.shape[0]):
        raise ValueError(
            f"similarity has shape {tuple(similarity.shape)} but there are {query_labels.shape[0]} "
            f"queries and {gallery_labels.shape[0]} gallery items"
        )
    order = similarity.argsort(dim=1, descending=True, stable=True)
    return gallery_labels.to(order.device)[order] == query_labels.to(order.device)[:, None]


def average_precision(relevant_in_order: Tensor) -> Tensor:
    """AP ``[Q]`` from rank-ordered relevance ``[Q, G]``; NaN for a query without relevant items."""
    hits = relevant_in_order.float()
    ranks = torch.arange(1, hits.shape[1] + 1, device=hits.device, dtype=hits.dtype)
    precision_at_rank = hits.cumsum(dim=1) / ranks
    num_relevant = hits.sum(dim=1)
    return (precision_at_rank * hits).sum(dim=1) / num_relevant  # 0/0 → NaN


def recall_at_k(relevant_in_order: Tensor, k: int) -> Tensor:
    """Bool ``[Q]``: whether a relevant item appears among the first ``k`` ranks."""
    return relevant_in_order[:, :k].any(dim=1)


def retrieval_metrics(
    similarity: Tensor,
    query_labels: Tensor,
    gallery_labels: Tensor,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """recall@k (percent) for each ``k`` and mAP (percent) over queries having a relevant item."""
    relevant = relevance_in_rank_order(similarity, query_labels, gallery_labels)
    return _summarise([_chunk_totals(relevant, ks)], ks)


def retrieval_metrics_from_features(
    queries: Tensor,
    query_labels: Tensor,
    gallery: Tensor,
    gallery_labels: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 256,
) -> dict[str, float]:
    """:func:`retrieval_metrics` with cosine similarity, computed ``chunk_size`` queries at a time."""
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries have dim {queries.shape[1]}, gallery {gallery.shape[1]}")
    gallery = F.normalize(gallery.float(), dim=1)
    totals = []
    for start in range(0, queries.shape[0], chunk_size):
        chunk = F.normalize(queries[start : start + chunk_size].float().to(gallery.device), dim=1)
        relevant = relevance_in_rank_order(chunk @ gallery.T, query_labels[start : start + chunk_size], gallery_labels)
        totals.append(_chunk_totals(relevant, ks))
    return _summarise(totals, ks)


def _chunk_totals(relevant: Tensor, ks: Sequence[int]) -> dict[str, float]:
    has_relevant = relevant.any(dim=1)
    relevant = relevant[has_relevant]
    totals = {f"recall@{k}": float(recall_at_k(relevant, k).sum()) for k in ks}
    totals["ap_sum"] = float(average_precision(relevant).sum()) if relevant.shape[0] else 0.0
    totals["queries"] = int(has_relevant.sum())
    totals["queries_without_relevant"] = int((~has_relevant).sum())
    return totals


def _summarise(totals: list[dict[str, float]], ks: Sequence[int]) -> dict[str, float]:
    queries = sum(t["queries"] for t in totals)
    if queries == 0:
        raise ValueError("no query has a relevant item in the gallery (no shared labels)")
    results = {f"recall@{k}": 100.0 * sum(t[f"recall@{k}"] for t in totals) / queries for k in ks}
    results["mAP"] = 100.0 * sum(t["ap_sum"] for t in totals) / queries
    results["queries"] = queries
    results["queries_without_relevant"] = int(sum(t["queries_without_relevant"] for t in totals))
    return results
