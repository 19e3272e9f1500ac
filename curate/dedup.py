"""Copy detection: near-duplicate pairs by cosine similarity, connected components, one kept per group.

DINOv2 (Sec. 3, "Deduplication") removes near-duplicate images from the uncurated pool and pool images
that duplicate the curated or evaluation sets: each image's k nearest neighbours are found with faiss,
pairs above a similarity threshold are linked, and one image is kept per connected component.

Example::

    pairs = near_duplicate_pairs(embeddings, threshold=0.9, k=16)
    labels = connected_components(len(embeddings), pairs)
    keep = keep_one_per_component(labels, names)  # boolean mask
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as _scipy_components

from dinolab.curate.faiss_gpu import on_gpus
from dinolab.schemas.config import DedupConfig
from dinolab.schemas.tables import DUPLICATES

IndexKind = Literal["auto", "flat", "ivf", "hnsw"]
KeepRule = Literal["first", "resolution"]
EXACT_SEARCH_LIMIT = 100_000  # "auto" uses the exact flat index up to this many database vectors
IVF_TRAIN_PER_LIST = 40  # IVF coarse quantiser trained on at most this many vectors per list


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm as a contiguous float32 array (inner product = cosine similarity)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32).copy()
    if vectors.ndim != 2:
        raise ValueError(f"expected a 2-D array of embeddings, got shape {vectors.shape}")
    faiss.normalize_L2(vectors)
    return vectors


def build_index(
    database: np.ndarray,
    kind: IndexKind = "auto",
    nlist: int | None = None,
    nprobe: int = 16,
    hnsw_neighbors: int = 32,
    seed: int = 0,
) -> faiss.Index:
    """An inner-product faiss index over unit-norm ``database`` rows.

    ``flat`` is exact (``IndexFlatIP``); ``ivf`` (``IndexIVFFlat``, ``nlist`` defaults to
    ``2·sqrt(n)`` lists, ``nprobe`` lists searched per query) and ``hnsw`` (``IndexHNSWFlat``) are
    approximate and meant for pools larger than :data:`EXACT_SEARCH_LIMIT`, where ``auto`` picks IVF.
    """
    count, dim = database.shape
    if kind == "auto":
        kind = "flat" if count <= EXACT_SEARCH_LIMIT else "ivf"
    if kind == "flat":
        index: faiss.Index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        nlist = nlist or max(1, min(count // 39, int(2 * math.sqrt(count))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10  # a coarse quantiser needs no converged k-means
        sample = np.random.default_rng(seed).permutation(count)[: IVF_TRAIN_PER_LIST * nlist]
        index.train(database[np.sort(sample)])
        index.nprobe = min(nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_neighbors, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = max(64, 2 * hnsw_neighbors)
    else:
        raise ValueError(f"unknown index kind {kind!r}; choose auto, flat, ivf or hnsw")
    index.add(database)
    return index


def nearest_neighbors(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    kind: IndexKind = "auto",
    batch_size: int = 16384,
    nprobe: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities and indices ``[n_queries, k]`` of each query's ``k`` nearest database rows.

    Inputs need not be normalised. Missing neighbours (approximate indices) have index -1, similarity -inf.
    """
    same = queries is database
    database = normalized(database)
    queries = database if same else normalized(queries)  # a self-search shares one normalised copy
    if database.shape[1] != queries.shape[1]:
        raise ValueError(f"database has dim {database.shape[1]}, queries dim {queries.shape[1]}")
    k = min(k, database.shape[0])
    if kind == "auto":
        kind = "flat" if database.shape[0] <= EXACT_SEARCH_LIMIT else "ivf"
    index = on_gpus(build_index(database, kind, nprobe=nprobe), kind)
    similarities, indices = [], []
    for start in range(0, queries.shape[0], batch_size):
        sims, ids = index.search(queries[start : start + batch_size], k)
        similarities.append(sims)
        indices.append(ids)
    sims, ids = np.concatenate(similarities), np.concatenate(indices)
    sims[ids < 0] = -np.inf
    return sims, ids


@dataclass(frozen=True)
class DuplicatePairs:
    """Pairs ``first[i] < second[i]`` of near-duplicate rows with their cosine ``similarity[i]``."""

    first: np.ndarray
    second: np.ndarray
    similarity: np.ndarray

    def __len__(self) -> int:
        return len(self.first)


def near_duplicate_pairs(
    embeddings: np.ndarray, threshold: float, k: int = 16, kind: IndexKind = "auto", nprobe: int = 16
) -> DuplicatePairs:
    """All pairs among each row's ``k`` nearest neighbours whose cosine similarity is ``>= threshold``.

    A row's own entry is dropped; each unordered pair appears once, sorted by (first, second).
    With ``kind="flat"`` and ``k`` above the largest group size this finds every pair above threshold.
    """
    count = embeddings.shape[0]
    if count < 2:
        empty = np.zeros(0, dtype=np.int64)
        return DuplicatePairs(empty, empty, np.zeros(0, dtype=np.float32))
    sims, ids = nearest_neighbors(embeddings, embeddings, k + 1, kind, nprobe=nprobe)
    rows = np.repeat(np.arange(count), ids.shape[1]).reshape(ids.shape)
    linked = (sims >= threshold) & (ids >= 0) & (ids != rows)
    first = np.minimum(rows[linked], ids[linked]).astype(np.int64)
    second = np.maximum(rows[linked], ids[linked]).astype(np.int64)
    similarity = sims[linked].astype(np.float32)
    keys, unique = np.unique(first * count + second, return_index=True)
    return DuplicatePairs(first[unique], second[unique], similarity[unique])


def connected_components(count: int, pairs: DuplicatePairs) -> np.ndarray:
    """Component label per row (``0..C-1``, numbered by first appearance) of the duplicate graph."""
    graph = coo_matrix(
        (np.ones(len(pairs), dtype=np.int8), (pairs.first, pairs.second)), shape=(count, count)
    )
    _, labels = _scipy_components(graph, directed=False)
    _, first_seen, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first_seen))  # renumber so component ids follow row order
    return order[inverse].astype(np.int64)


def keep_one_per_component(
    labels: np.ndarray,
    names: list[str],
    rule: KeepRule = "first",
    pixel_counts: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean mask keeping one row per component.

    ``first``: the row whose name sorts first. ``resolution``: the row with most pixels
    (``pixel_counts``), ties broken by name. Both are deterministic.
    """
    if rule == "resolution":
        if pixel_counts is None:
            raise ValueError("keep rule 'resolution' needs pixel_counts")
        primary = -np.asarray(pixel_counts, dtype=np.int64)
    elif rule == "first":
        primary = np.zeros(len(names), dtype=np.int64)
    else:
        raise ValueError(f"unknown keep rule {rule!r}; choose first or resolution")
    name_rank = np.argsort(np.argsort(np.array(names, dtype=object), kind="stable"), kind="stable")
    order = np.lexsort((name_rank, primary, labels))  # by component, then rule, then name
    keep = np.zeros(len(names), dtype=bool)
    is_first_of_component = np.ones(len(order), dtype=bool)
    is_first_of_component[1:] = labels[order][1:] != labels[order][:-1]
    keep[order[is_first_of_component]] = True
    return keep


def best_matches(
    queries: np.ndarray, reference: np.ndarray, kind: IndexKind = "auto", nprobe: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, its most similar ``reference`` row: (cosine similarity, index)."""
    sims, ids = nearest_neighbors(reference, queries, 1, kind, nprobe=nprobe)
    return sims[:, 0], ids[:, 0]


def exact_pairs(digests: list[str | None]) -> DuplicatePairs:
    """Pairs linking every row to the first row with the same content hash (byte-identical files); a row of
    no hash (a precomputed embedding whose file was never read) links to none."""
    first_of: dict[str, int] = {}
    first, second = [], []
    for row, digest in enumerate(digests):
        if digest is None:
            continue
        head = first_of.setdefault(digest, row)
        if head != row:
            first.append(head)
            second.append(row)
    return DuplicatePairs(np.array(first, dtype=np.int64), np.array(second, dtype=np.int64), np.ones(len(first), np.float32))


def _merge(*pair_sets: DuplicatePairs) -> DuplicatePairs:
    first = np.concatenate([p.first for p in pair_sets])
    second = np.concatenate([p.second for p in pair_sets])
    similarity = np.concatenate([p.similarity for p in pair_sets])
    return DuplicatePairs(first, second, similarity)


def duplicates_table(
    pool: pa.Table,
    vectors: np.ndarray,
    references: dict[str, np.ndarray],
    config: DedupConfig,
) -> pa.Table:
    """The ``duplicates`` table of the pool: groups, the image kept in each, and why the others go.

    ``pool`` holds the pool's ``images`` rows (``key``, ``uri``, ``sha256``, ``width``, ``height``) in the
    order of ``vectors``. Byte-identical files are linked (``exact``), then pairs of kNN neighbours
    (``config.k``) at cosine similarity ``>= config.threshold`` (``copy``); each connected component
    keeps its largest-resolution image (ties: smallest key). A component holding an image within
    ``config.eval_threshold`` of a ``references`` set (the evaluation sets) is removed whole as
    ``leak:<set>``. ``group`` is the row, in key order, of the group's kept image.
    """
    keys = pool.column("key").to_pylist()
    count = len(keys)
    order = np.argsort(np.array(keys, dtype=object), kind="stable")
    keys = [keys[i] for i in order]
    uris = [pool.column("uri")[int(i)].as_py() for i in order]
    digests = [pool.column("sha256")[int(i)].as_py() for i in order]
    sides = [np.array([side or 0 for side in pool.column(name).to_pylist()], np.int64) for name in ("width", "height")]
    pixels = (sides[0] * sides[1])[order]  # 0 where unknown (a precomputed embedding's image is not read)
    embeddings = np.asarray(vectors, dtype=np.float32)[order]
    if config.center and count:
        mean = embeddings.mean(axis=0, keepdims=True)
        embeddings = embeddings - mean
        references = {name: ref - mean for name, ref in references.items()}
    copies = near_duplicate_pairs(embeddings, config.threshold, min(config.k, max(count - 1, 1)), config.index,
                                  config.nprobe)
    components = connected_components(count, _merge(exact_pairs(digests), copies))
    keep = keep_one_per_component(components, keys, "resolution", pixels)
    kept_row = np.zeros(count, dtype=np.int64)
    kept_row[components[keep]] = np.flatnonzero(keep)
    group = kept_row[components]
    unit = normalized(embeddings) if count else embeddings
    similarity = np.einsum("ij,ij->i", unit, unit[group]) if count else np.zeros(0, np.float32)
    reason: list[str | None] = [
        None if keep[row] else ("exact" if digests[row] == digests[group[row]] else "copy") for row in range(count)
    ]
    kept = keep.copy()
    for set_name, reference in sorted(references.items()):
        if len(reference) == 0 or count == 0:
            continue
        best, _ = best_matches(embeddings, reference, config.index, config.nprobe)
        leaking = np.unique(components[best >= config.eval_threshold])
        for row in np.flatnonzero(np.isin(components, leaking)):
            if reason[row] is None or not reason[row].startswith("leak:"):
                reason[row] = f"leak:{set_name}"
            kept[row] = False
    return pa.table(
        {
            "key": keys,
            "uri": uris,
            "group": group,
            "kept": kept,
            "reason": reason,
            "kept_key": [keys[g] for g in group],
            "similarity": np.asarray(similarity, dtype=np.float32),
        },
        schema=DUPLICATES.schema,
    )
