"""The sample stage as steps over partitions: the ``selection`` table written one part per lake partition.

The same methods as the single-task :func:`curate.sample.selection_table`, each cut into per-partition maps
and small reduces that meet through files under ``OUT/work/sample/``. The curated queries are cut into blocks
of :data:`QUERY_BLOCK` rows in key order, so no task holds more than one pool partition (``n`` rows) and one
block (``b`` rows) of queries (``d`` = dimension, ``r`` = ``per_query``, ``k`` = level-1 clusters):

============  ===============  ===========================================================  ====================
step          units            one task                                                     holds
============  ===============  ===========================================================  ====================
``prepare``   one              the method (``auto`` resolved); the curated queries in key    the keys, a block,
                               order, a block a time (``queries/block-NNNNN.npz``)          one embeddings part
``scan``      (partition,      balanced: images per level-1 cluster and its parents;        the partition, a
              query block)     neighbours: each query of the block's ``per_query`` nearest  block, ``12·b·r``
                               images of the partition; clusters: per-cluster vector sums   hits
                               (balanced and clusters: block 0 only)
``plan``      query block      neighbours: each query of the block's ``per_query`` nearest  ``40·b·r``
                               over all partitions (``plan/block-NNNNN.npz``)
              / one            balanced: each level-1 cluster's budget                      ``O(k)`` counts, or
                               (:func:`curate.kmeans.cluster_budgets`, the single task's    the centroids and a
                               allocation); clusters: the centroids, each query's nearest   block
                               cluster (a block at a time), the clusters hit
``draw``      partition        balanced / clusters: within each cluster, the partition's    the partition, a
                               lowest draw scores, as many as the cluster's quota           block
``limit``     one              each cluster's quota-th lowest draw score over all           16 bytes a drawn
                               partitions                                                   image
``write``     partition        the partition's ``selection`` part (retrieval: the hits      the partition, a
                               merged a query block at a time)                              block
============  ===============  ===========================================================  ====================

Drawing ``m`` images at random from a cluster spread over partitions takes the ``m`` lowest *draw scores*,
a hash of (seed, key) (:func:`curate.lloyd.key_scores`): the same images whatever the partitioning, in
any task order. Where queries meet across blocks (a pool image's most similar query), the earlier block wins
ties, as the lower query does within one: the table does not depend on the block size either.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dinolab.curate import manifest, output, tables
from dinolab.curate.dedup import nearest_neighbors
from dinolab.curate.kmeans import cluster_budgets
from dinolab.curate.lloyd import cluster_sums, key_scores, unit
from dinolab.curate.output import Location
from dinolab.curate.partitions import kept_pool, load_arrays, save_arrays, work
from dinolab.curate.steps import Step
from dinolab.schemas.config import PipelineConfig
from dinolab.schemas.tables import SELECTION, utc_now

STAGE = "sample"
WORK_FILES = ("work/sample/*", "work/sample/queries/*", "work/sample/scan/*", "work/sample/plan/*",
              "work/sample/draw/*")
"""Everything the steps write besides the ``selection`` parts (removed by the last step, or with the stage)."""
NO_LIMIT = np.iinfo(np.uint64).max
QUERY_BLOCK = 65_536
"""Curated queries a block holds (``prepare`` cuts them; the later steps read the blocks it wrote)."""


def _dir(out: Location) -> Location:
    return work(out, STAGE)


def _partitions(out: Location, config: PipelineConfig | None = None, previous: list | None = None) -> list[int]:
    return sorted(tables.done_parts(out, "files"))


def _parts(out: Location, folder: str) -> list[dict[str, np.ndarray]]:
    directory = _dir(out) / folder
    return [load_arrays(directory / name) for name in output.names(directory, "part-*.npz")]


def _info(out: Location) -> dict:
    """What ``prepare`` wrote: the method, the number of queries and of query blocks, the block size."""
    return json.loads(output.read_bytes(_dir(out) / "method.json"))


def _method(out: Location) -> str:
    return _info(out)["method"]


def _pool(out: Location, partition: int):
    """Kept pool of the partition with its ``clusters`` levels ``[n, L]`` (rows in the same order)."""
    pool = kept_pool(out, partition)
    clusters = tables.read_part(out, "clusters", partition)
    at = pc.index_in(pa.array(pool.keys, pa.string()), value_set=clusters["key"])
    levels = pc.list_flatten(clusters["levels"].take(at)).to_numpy(zero_copy_only=False).astype(np.int64)
    width = len(levels) // len(pool.keys) if len(pool.keys) else 1  # every row has one id per level
    return pool, levels.reshape(len(pool.keys), width)


def _cosine(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity, computed one row at a time (the same bits whatever the batch: a matrix
    product's rounding depends on its shape, and the table must not depend on the partitioning)."""
    if not len(first):
        return np.zeros(0, dtype=np.float32)
    return np.sum(unit(first) * unit(second), axis=1, dtype=np.float32)


def _lowest_per_cluster(labels: np.ndarray, scores: np.ndarray, quota: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label, score) of the ``quota[label]`` lowest scores of each label."""
    order = np.lexsort((scores, labels))
    sorted_labels = labels[order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_labels, sorted_labels)
    taken = order[rank < quota[sorted_labels]]
    return labels[taken], scores[taken]


# -- steps -------------------------------------------------------------------------------------------------


def _curated(out: Location) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Keys, partitions and embeddings rows of every curated image, in key order (ties: partition order)."""
    keys, parts, rows = [], [], []
    for partition in _partitions(out):
        table = tables.read_part(out, "embeddings", partition)
        table = table.filter(pc.equal(table["role"], "curated"))
        keys.append(table.column("key").combine_chunks().cast(pa.string()))
        parts.append(np.full(len(table), partition, dtype=np.int64))
        rows.append(table.column("row").to_numpy().astype(np.int64))
    if not keys:
        return pa.array([], pa.string()), np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = pa.concat_arrays(keys)
    order = pc.sort_indices(keys).to_numpy()  # stable
    return keys.take(order), np.concatenate(parts)[order], np.concatenate(rows)[order]


def _write_blocks(out: Location, keys: pa.Array, parts: np.ndarray, rows: np.ndarray) -> int:
    """Write the queries as blocks of :data:`QUERY_BLOCK` rows (``queries/block-NNNNN.npz``); the number of
    blocks. One embeddings part is held at a time, kept for the next block when it reads it too (a local part
    is memory-mapped: only the rows taken are read; a part in a store is read whole by each block it feeds)."""
    held, matrix = None, None
    blocks = -(-len(keys) // QUERY_BLOCK)
    for block in range(blocks):
        span = slice(block * QUERY_BLOCK, (block + 1) * QUERY_BLOCK)
        block_parts, block_rows = parts[span], rows[span]
        vectors = None
        for partition in sorted(set(block_parts.tolist()), key=lambda p: (p != held, p)):  # the held part first
            if partition != held:
                matrix = None  # the previous part goes before the next is read
                matrix, held = tables.read_array(out, "embeddings", partition), partition
            if vectors is None:
                vectors = np.zeros((len(block_parts), matrix.shape[1]), dtype=np.float32)
            at = np.flatnonzero(block_parts == partition)
            vectors[at] = matrix[block_rows[at]]
        block_keys = np.array(keys[span].to_pylist(), dtype=str)
        save_arrays(_dir(out) / "queries" / f"block-{block:05d}.npz", keys=block_keys, vectors=vectors)
    return blocks


def prepare(out: Location, config: PipelineConfig, unit_=None, previous=None) -> dict:
    """Resolve ``auto`` and write the curated queries (every curated embedding) in key order, as blocks."""
    keys, parts, rows = _curated(out)
    method = config.sample.method
    if method == "auto":
        method = "retrieval" if len(keys) else "balanced"
    if method == "retrieval" and not len(keys):
        raise ValueError("sample.method=retrieval needs at least one --curated set")
    if method == "retrieval":
        method = "clusters" if config.sample.retrieval == "clusters" else "neighbours"
    blocks = _write_blocks(out, keys, parts, rows)
    info = {"method": method, "queries": len(keys), "blocks": blocks, "block": QUERY_BLOCK}
    output.write_bytes(_dir(out) / "method.json", json.dumps(info).encode())
    return {"queries": len(keys)}


def _query_block(out: Location, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys and ``[b, d]`` vectors of query block ``block``."""
    arrays = load_arrays(_dir(out) / "queries" / f"block-{block:05d}.npz")
    return arrays["keys"], arrays["vectors"]


def _scan_units(out: Location, config: PipelineConfig, previous: list | None = None) -> list[tuple[int, int]]:
    """(partition, query block): every block for neighbours, block 0 alone for the other methods."""
    blocks = _info(out)["blocks"] if _method(out) == "neighbours" else 1
    return [(partition, block) for partition in _partitions(out) for block in range(blocks)]


def scan(out: Location, config: PipelineConfig, part_block: tuple[int, int], previous=None) -> dict:
    partition, block = part_block
    method = _method(out)
    if method == "all":
        return {}
    pool, levels = _pool(out, partition)
    path = _dir(out) / "scan" / f"part-{partition:05d}-{block:05d}.npz"
    if method == "balanced":
        paths, sizes = np.unique(levels, axis=0, return_counts=True) if len(levels) else (levels, np.zeros(0, np.int64))
        save_arrays(path, paths=paths, sizes=sizes)
    elif method == "neighbours":
        _, queries = _query_block(out, block)
        if len(pool.keys):
            sims, rows = nearest_neighbors(pool.vectors, queries, config.sample.per_query, "flat")
        else:
            sims, rows = np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        save_arrays(path, sims=sims, rows=rows)
    else:  # clusters: sums of unit vectors per level-1 cluster, for the centroids
        labels = levels[:, 0]
        k = int(labels.max()) + 1 if len(labels) else 0
        sums = cluster_sums(unit(pool.vectors), labels, np.zeros(len(labels)), k)
        present = np.flatnonzero(sums.counts)
        save_arrays(path, clusters=present, sums=sums.sums[present])
    return {"in": len(pool.keys)}


def _plan_units(out: Location, config: PipelineConfig, previous: list | None = None) -> list:
    """One unit per query block for neighbours (each merged on its own), else one."""
    return list(range(_info(out)["blocks"])) if _method(out) == "neighbours" else [None]


def _merge_block(out: Location, config: PipelineConfig, block: int) -> None:
    """Each query of the block's ``per_query`` nearest over every partition, stream-merged."""
    best_sims = best_parts = best_rows = None
    directory = _dir(out) / "scan"
    for name in output.names(directory, f"part-*-{block:05d}.npz"):
        part = load_arrays(directory / name)
        number = int(name[5:10])
        sims, rows = part["sims"], part["rows"]
        parts = np.full(rows.shape, number, dtype=np.int64)
        if best_sims is not None:
            sims = np.concatenate([best_sims, sims], axis=1)
            rows = np.concatenate([best_rows, rows], axis=1)
            parts = np.concatenate([best_parts, parts], axis=1)
        order = np.lexsort((rows, parts, -sims), axis=1)[:, : config.sample.per_query]  # ties: lower partition, row
        best_sims, best_rows, best_parts = (np.take_along_axis(a, order, axis=1) for a in (sims, rows, parts))
    save_arrays(_dir(out) / "plan" / f"block-{block:05d}.npz", sims=best_sims, rows=best_rows, parts=best_parts)


def plan(out: Location, config: PipelineConfig, block: int | None = None, previous=None) -> dict:
    method = _method(out)
    cfg = config.sample
    if method == "balanced":
        scans = [s for s in _parts(out, "scan") if len(s["sizes"])]
        if not scans:
            save_arrays(_dir(out) / "plan.npz", quota=np.zeros(0, dtype=np.int64))
            return {"in": 0, "out": 0}
        paths = np.concatenate([s["paths"] for s in scans if len(s["sizes"])])
        sizes = np.concatenate([s["sizes"] for s in scans if len(s["sizes"])])
        total = int(sizes.sum())
        counts = [int(paths[:, level].max()) + 1 for level in range(paths.shape[1])]
        level_sizes = np.bincount(paths[:, 0], weights=sizes, minlength=counts[0]).astype(np.int64)
        parents = []
        for level in range(1, paths.shape[1]):
            parent = np.zeros(counts[level - 1], dtype=np.int64)
            parent[paths[:, level - 1]] = paths[:, level]
            parents.append(parent)
        target = cfg.target or (total + 1) // 2
        quota = cluster_budgets(parents, level_sizes, counts, target, np.random.default_rng(cfg.seed))
        save_arrays(_dir(out) / "plan.npz", quota=quota)
        return {"in": total, "out": int(quota.sum())}
    if method == "neighbours":
        _merge_block(out, config, block)
        return {}
    if method == "clusters":  # the centroids, then each query's nearest cluster, a block at a time
        scans = [s for s in _parts(out, "scan") if len(s["clusters"])]
        k = max(int(s["clusters"].max()) for s in scans) + 1
        sums = np.zeros((k, scans[0]["sums"].shape[1]), dtype=np.int64)
        for part in scans:
            sums[part["clusters"]] += part["sums"]
        centroids = unit(sums.astype(np.float64))
        hits = np.zeros(k, dtype=np.int64)
        for number in range(_info(out)["blocks"]):
            nearest = np.argmax(unit(_query_block(out, number)[1]) @ centroids.T, axis=1)
            hits += np.bincount(nearest, minlength=k)
            save_arrays(_dir(out) / "plan" / f"block-{number:05d}.npz", nearest=nearest)
        quota = np.zeros(k, dtype=np.int64)
        quota[hits >= max(cfg.min_cluster_hits, 1)] = cfg.per_cluster
        save_arrays(_dir(out) / "plan.npz", quota=quota)
        return {"clusters": int(np.count_nonzero(quota))}
    return {}


def _plan_block(out: Location, block: int) -> dict[str, np.ndarray]:
    return load_arrays(_dir(out) / "plan" / f"block-{block:05d}.npz")


def _eligible(out: Location, config: PipelineConfig, pool, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster retrieval: rows in a hit cluster at least ``min_similarity`` to the best of the queries hitting
    it, with that query's key and the similarity (the query blocks read one at a time)."""
    quota = load_arrays(_dir(out) / "plan.npz")["quota"]
    rows = np.flatnonzero(quota[labels] > 0) if len(labels) else np.zeros(0, np.int64)
    best_key = np.full(len(rows), None, dtype=object)
    best_sim = np.full(len(rows), -np.inf, dtype=np.float32)
    if len(rows):
        vectors, row_labels = unit(pool.vectors[rows]), labels[rows]
        for block in range(_info(out)["blocks"]):
            nearest = _plan_block(out, block)["nearest"]
            clusters = np.intersect1d(nearest, row_labels)
            if not len(clusters):
                continue
            keys, queries = _query_block(out, block)
            for cluster in clusters:
                at = np.flatnonzero(row_labels == cluster)
                hitting = np.flatnonzero(nearest == cluster)
                best = hitting[np.argmax(vectors[at] @ unit(queries[hitting]).T, axis=1)]
                sims = _cosine(vectors[at], queries[best])
                better = sims > best_sim[at]  # ties: the earlier block's query
                best_sim[at[better]], best_key[at[better]] = sims[better], keys[best[better]]
    keep = best_sim >= config.sample.min_similarity
    return rows[keep], best_key[keep], best_sim[keep]


def _nearest_hits(out: Location, config: PipelineConfig, partition: int,
                  pool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Retrieval of the nearest: the partition's pool rows some query retrieved (at least ``min_similarity``),
    sorted, each with its most similar query (ties: the lowest) as key and similarity; the merged hits and the
    queries read a block at a time."""
    n = len(pool.keys)
    best_sim = np.full(n, -np.inf, dtype=np.float32)
    best_block = np.full(n, -1, dtype=np.int64)
    best_query = np.full(n, -1, dtype=np.int64)  # within its block
    blocks = _info(out)["blocks"]
    for block in range(blocks):
        plan_ = _plan_block(out, block)
        mine = (plan_["parts"] == partition) & (plan_["sims"] >= config.sample.min_similarity)
        hit_rows, hit_query, hit_sims = plan_["rows"][mine], np.nonzero(mine)[0], plan_["sims"][mine]
        order = np.lexsort((hit_query, -hit_sims, hit_rows))  # per row: most similar first, then lowest query
        first = np.r_[True, hit_rows[order][1:] != hit_rows[order][:-1]] if len(order) else np.zeros(0, bool)
        rows, query, sims = hit_rows[order][first], hit_query[order][first], hit_sims[order][first]
        better = sims > best_sim[rows]  # ties: the earlier block's query
        best_sim[rows[better]], best_block[rows[better]], best_query[rows[better]] = sims[better], block, query[better]
    rows = np.flatnonzero(best_block >= 0)
    keys = np.full(len(rows), None, dtype=object)
    similarity = np.zeros(len(rows), dtype=np.float32)
    for block in np.unique(best_block[rows]):
        at = np.flatnonzero(best_block[rows] == block)
        block_keys, queries = _query_block(out, int(block))
        keys[at] = block_keys[best_query[rows[at]]]
        similarity[at] = _cosine(pool.vectors[rows[at]], queries[best_query[rows[at]]])
    return rows, keys, similarity


DRAWING = ("balanced", "clusters")
"""The methods that draw images at random within clusters (the only ones with ``draw`` and ``limit`` units)."""


def _draw_units(out: Location, config: PipelineConfig, previous: list | None = None) -> list[int]:
    return _partitions(out) if _method(out) in DRAWING else []


def _limit_units(out: Location, config: PipelineConfig, previous: list | None = None) -> list[None]:
    return [None] if _method(out) in DRAWING else []


def draw(out: Location, config: PipelineConfig, partition: int, previous=None) -> dict:
    method = _method(out)
    pool, levels = _pool(out, partition)
    labels = levels[:, 0]
    quota = load_arrays(_dir(out) / "plan.npz")["quota"]
    rows = _eligible(out, config, pool, labels)[0] if method == "clusters" else np.arange(len(labels))
    scores = key_scores([pool.keys[r] for r in rows], config.sample.seed)
    taken_labels, taken_scores = _lowest_per_cluster(labels[rows], scores, quota)
    save_arrays(_dir(out) / "draw" / f"part-{partition:05d}.npz", labels=taken_labels, scores=taken_scores)
    return {"in": len(rows)}


def limit(out: Location, config: PipelineConfig, unit_=None, previous=None) -> dict:
    """Each cluster's quota-th lowest draw score over every partition (no limit when it has fewer)."""
    quota = load_arrays(_dir(out) / "plan.npz")["quota"]
    parts = _parts(out, "draw")
    labels = np.concatenate([p["labels"] for p in parts]).astype(np.int64)
    scores = np.concatenate([p["scores"] for p in parts]).astype(np.uint64)
    labels, scores = _lowest_per_cluster(labels, scores, quota)
    limits = np.full(len(quota), NO_LIMIT, dtype=np.uint64)
    order = np.lexsort((scores, labels))
    last = np.r_[labels[order][1:] != labels[order][:-1], True] if len(order) else np.zeros(0, bool)
    full = np.bincount(labels, minlength=len(quota)) >= quota
    ends = order[last]
    limits[labels[ends]] = np.where(full[labels[ends]], scores[ends], NO_LIMIT)
    save_arrays(_dir(out) / "limits.npz", limits=limits)
    return {"out": len(labels)}


def write(out: Location, config: PipelineConfig, partition: int, previous=None) -> dict:
    """The partition's ``selection`` part (its pool rows in embeddings order, as chosen by the method)."""
    method = _method(out)
    pool, levels = _pool(out, partition)
    labels = levels[:, 0] if len(levels) else np.zeros(0, np.int64)
    query_key = np.full(len(labels), None, dtype=object)
    similarity = np.full(len(labels), np.nan, dtype=np.float32)
    if method == "all":
        rows = np.arange(len(labels))
    elif method == "balanced":
        limits = load_arrays(_dir(out) / "limits.npz")["limits"]
        scores = key_scores(pool.keys, config.sample.seed)
        quota = load_arrays(_dir(out) / "plan.npz")["quota"]
        rows = np.flatnonzero((quota[labels] > 0) & (scores <= limits[labels])) if len(labels) else labels
    elif method == "clusters":
        limits = load_arrays(_dir(out) / "limits.npz")["limits"]
        eligible, best_key, best_sim = _eligible(out, config, pool, labels)
        scores = key_scores([pool.keys[r] for r in eligible], config.sample.seed)
        chosen = scores <= limits[labels[eligible]]
        rows = eligible[chosen]
        query_key[rows], similarity[rows] = best_key[chosen], best_sim[chosen]
    else:  # neighbours: the hits in this partition, each pool row once, with its most similar query
        rows, hit_keys, hit_sims = _nearest_hits(out, config, partition, pool)
        query_key[rows], similarity[rows] = hit_keys, hit_sims
    name = {"neighbours": "retrieval:neighbours", "clusters": "retrieval:clusters"}.get(method, method)
    table = pa.table({
        "key": [pool.keys[r] for r in rows], "uri": [pool.uris[r] for r in rows], "method": [name] * len(rows),
        "query_key": [None if query_key[r] is None else str(query_key[r]) for r in rows],
        "cluster": labels[rows].astype(np.int32),
        "similarity": [None if np.isnan(similarity[r]) else float(similarity[r]) for r in rows],
        "selected_at": [utc_now()] * len(rows),
    }, schema=SELECTION.schema)
    path = tables.write_part(out, "selection", partition, table)
    manifest.record(out, STAGE, f"part-{partition:05d}", [path])
    return {"in": len(labels), "out": len(rows)}


def clean(out: Location, config: PipelineConfig, unit_=None, previous=None) -> dict:
    """Remove the stage's work folder once every part of its table is written."""
    output.remove_tree(_dir(out))
    return {}


# -- what already exists (a rerun skips those units) -------------------------------------------------------


def _files_done(name: str):
    """``done`` of a step whose unit ``u`` writes ``name.format(u)`` under the work folder."""

    def done(out: Location, config: PipelineConfig, units: list) -> dict:
        return {u: {} for u in units if output.is_file(_dir(out) / name.format(u))}

    return done


def _planned(out: Location, config: PipelineConfig, units: list) -> dict:
    """A neighbours block's merged hits, or the one plan of the other methods."""
    name = "plan/block-{:05d}.npz" if _method(out) == "neighbours" else "plan.npz"
    return _files_done(name)(out, config, units)


def _written(out: Location, config: PipelineConfig, units: list) -> dict:
    parts = tables.done_parts(out, "selection")
    return {partition: {} for partition in units if partition in parts}


STEPS = (
    Step("prepare", prepare, done=_files_done("method.json")),  # written after the query blocks
    Step("scan", scan, units=_scan_units, done=_files_done("scan/part-{0[0]:05d}-{0[1]:05d}.npz")),
    Step("plan", plan, units=_plan_units, done=_planned),
    Step("draw", draw, units=_draw_units, done=_files_done("draw/part-{:05d}.npz")),
    Step("limit", limit, units=_limit_units, done=_files_done("limits.npz")),
    Step("write", write, units=_partitions, done=_written),
    Step("clean", clean),
)
"""The sample stage's shape."""
