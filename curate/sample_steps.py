"""The sample stage as steps over partitions: the ``selection`` table written one part per lake partition.

The same methods as the single-task :func:`curate.sample.selection_table`, each cut into per-partition maps
and small reduces that meet through files under ``OUT/work/sample/`` (``P`` = per partition, ``1`` = one task):

============  ====  ==========================================================================================
``prepare``    1    the method (``auto`` resolved), the curated queries in key order (``queries.npz``)
``scan``       P    balanced: images per level-1 cluster and its parents; neighbours: each query's
                    ``per_query`` nearest images of the partition; clusters: per-cluster vector sums
``plan``       1    balanced: each level-1 cluster's budget (:func:`curate.kmeans.cluster_budgets`, the same
                    allocation as the single task); neighbours: each query's ``per_query`` nearest over all
                    partitions; clusters: the clusters hit by curated queries, from the centroids
``draw``       P    balanced / clusters: within each cluster, the partition's lowest draw scores, as many as
                    the cluster's quota
``limit``      1    each cluster's quota-th lowest draw score over all partitions
``write``      P    the partition's ``selection`` part
============  ====  ==========================================================================================

Drawing ``m`` images at random from a cluster spread over partitions takes the ``m`` lowest *draw scores*,
a hash of (seed, key) (:func:`curate.lloyd.key_scores`): the same images whatever the partitioning, in
any task order. The reduces hold ``O(k)`` counts, ``[queries, per_query]`` hits, or one score per selected
image (``limit``).
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
WORK_FILES = ("work/sample/*", "work/sample/scan/*", "work/sample/draw/*")
"""Everything the steps write besides the ``selection`` parts (removed by the last step, or with the stage)."""
NO_LIMIT = np.iinfo(np.uint64).max


def _dir(out: Location) -> Location:
    return work(out, STAGE)


def _partitions(out: Location, config: PipelineConfig | None = None, previous: list | None = None) -> list[int]:
    return sorted(tables.done_parts(out, "files"))


def _parts(out: Location, folder: str) -> list[dict[str, np.ndarray]]:
    directory = _dir(out) / folder
    return [load_arrays(directory / name) for name in output.names(directory, "part-*.npz")]


def _method(out: Location) -> str:
    return json.loads(output.read_bytes(_dir(out) / "method.json"))["method"]


def _pool(out: Location, partition: int):
    """Kept pool of the partition with its ``clusters`` levels ``[n, L]`` (rows in the same order)."""
    pool = kept_pool(out, partition)
    clusters = tables.read_part(out, "clusters", partition)
    at = pc.index_in(pa.array(pool.keys, pa.string()), value_set=clusters["key"])
    levels = clusters["levels"].take(at).to_pylist()
    width = len(levels[0]) if levels else 1
    return pool, np.array(levels, dtype=np.int64).reshape(len(pool.keys), width)


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


def prepare(out: Location, config: PipelineConfig, unit_=None, previous=None) -> dict:
    """Resolve ``auto`` and gather the curated queries (every curated embedding, in key order)."""
    keys, vectors = [], []
    for partition in _partitions(out):
        rows = tables.read_part(out, "embeddings", partition)
        rows = rows.filter(pc.equal(rows["role"], "curated"))
        if len(rows):
            matrix = tables.read_array(out, "embeddings", partition)
            keys.extend(rows.column("key").to_pylist())
            vectors.append(np.asarray(matrix[rows.column("row").to_numpy()], dtype=np.float32))
    method = config.sample.method
    if method == "auto":
        method = "retrieval" if keys else "balanced"
    if method == "retrieval" and not keys:
        raise ValueError("sample.method=retrieval needs at least one --curated set")
    if method == "retrieval":
        method = "clusters" if config.sample.retrieval == "clusters" else "neighbours"
    order = np.argsort(np.array(keys, dtype=object), kind="stable") if keys else np.zeros(0, np.int64)
    matrix = np.concatenate(vectors)[order] if vectors else np.zeros((0, 1), np.float32)
    save_arrays(_dir(out) / "queries.npz", keys=np.array(keys, dtype=object)[order].astype(str), vectors=matrix)
    output.write_bytes(_dir(out) / "method.json", json.dumps({"method": method}).encode())
    return {"queries": len(keys)}


def _queries(out: Location) -> tuple[np.ndarray, np.ndarray]:
    with np.load(output.readable(_dir(out) / "queries.npz")) as data:
        return data["keys"], data["vectors"]


def scan(out: Location, config: PipelineConfig, partition: int, previous=None) -> dict:
    method = _method(out)
    if method == "all":
        return {}
    pool, levels = _pool(out, partition)
    path = _dir(out) / "scan" / f"part-{partition:05d}.npz"
    if method == "balanced":
        paths, sizes = np.unique(levels, axis=0, return_counts=True) if len(levels) else (levels, np.zeros(0, np.int64))
        save_arrays(path, paths=paths, sizes=sizes)
    elif method == "neighbours":
        _, queries = _queries(out)
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


def plan(out: Location, config: PipelineConfig, unit_=None, previous=None) -> dict:
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
    if method == "neighbours":  # each query's per_query nearest over every partition: stream-merged
        best_sims = best_parts = best_rows = None
        directory = _dir(out) / "scan"
        for name in output.names(directory, "part-*.npz"):
            part = load_arrays(directory / name)
            number = int(name[5:10])
            sims, rows = part["sims"], part["rows"]
            parts = np.full(rows.shape, number, dtype=np.int64)
            if best_sims is not None:
                sims = np.concatenate([best_sims, sims], axis=1)
                rows = np.concatenate([best_rows, rows], axis=1)
                parts = np.concatenate([best_parts, parts], axis=1)
            order = np.lexsort((rows, parts, -sims), axis=1)[:, : cfg.per_query]  # ties: lower partition, row
            best_sims, best_rows, best_parts = (np.take_along_axis(a, order, axis=1) for a in (sims, rows, parts))
        save_arrays(_dir(out) / "plan.npz", sims=best_sims, rows=best_rows, parts=best_parts)
        return {}
    if method == "clusters":
        keys, queries = _queries(out)
        scans = [s for s in _parts(out, "scan") if len(s["clusters"])]
        k = max(int(s["clusters"].max()) for s in scans) + 1
        sums = np.zeros((k, queries.shape[1]), dtype=np.int64)
        for part in scans:
            sums[part["clusters"]] += part["sums"]
        centroids = unit(sums.astype(np.float64))
        nearest = np.argmax(unit(queries) @ centroids.T, axis=1)
        hit, hits = np.unique(nearest, return_counts=True)
        quota = np.zeros(k, dtype=np.int64)
        quota[hit[hits >= cfg.min_cluster_hits]] = cfg.per_cluster
        save_arrays(_dir(out) / "plan.npz", quota=quota, nearest=nearest)
        return {"clusters": int(np.count_nonzero(quota))}
    return {}


def _eligible(out: Location, config: PipelineConfig, pool, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster retrieval: rows in a hit cluster at least ``min_similarity`` to the best of the queries hitting
    it, with that query and similarity."""
    keys, queries = _queries(out)
    nearest = load_arrays(_dir(out) / "plan.npz")["nearest"]
    quota = load_arrays(_dir(out) / "plan.npz")["quota"]
    rows = np.flatnonzero(quota[labels] > 0) if len(labels) else np.zeros(0, np.int64)
    best_query = np.full(len(rows), -1, dtype=np.int64)
    best_sim = np.full(len(rows), -np.inf, dtype=np.float32)
    if len(rows):
        vectors = unit(pool.vectors[rows])
        for cluster in np.unique(labels[rows]):
            at = np.flatnonzero(labels[rows] == cluster)
            hitting = np.flatnonzero(nearest == cluster)
            sims = vectors[at] @ unit(queries[hitting]).T
            best = np.argmax(sims, axis=1)
            best_query[at] = hitting[best]
            best_sim[at] = _cosine(vectors[at], queries[hitting[best]])
    keep = best_sim >= config.sample.min_similarity
    return rows[keep], best_query[keep], best_sim[keep]


def draw(out: Location, config: PipelineConfig, partition: int, previous=None) -> dict:
    method = _method(out)
    if method not in ("balanced", "clusters"):
        return {}
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
    if _method(out) not in ("balanced", "clusters"):
        return {}
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
    query = np.full(len(labels), -1, dtype=np.int64)
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
        eligible, best_query, best_sim = _eligible(out, config, pool, labels)
        scores = key_scores([pool.keys[r] for r in eligible], config.sample.seed)
        chosen = scores <= limits[labels[eligible]]
        rows = eligible[chosen]
        query[rows], similarity[rows] = best_query[chosen], best_sim[chosen]
    else:  # neighbours: the hits in this partition, each pool row once, with its most similar query
        plan_ = load_arrays(_dir(out) / "plan.npz")
        mine = (plan_["parts"] == partition) & (plan_["sims"] >= config.sample.min_similarity)
        hit_rows = plan_["rows"][mine]
        hit_query = np.nonzero(mine)[0]
        hit_sims = plan_["sims"][mine]
        order = np.lexsort((hit_query, -hit_sims, hit_rows))  # per row: most similar first, then lowest query
        first = np.r_[True, hit_rows[order][1:] != hit_rows[order][:-1]] if len(order) else np.zeros(0, bool)
        rows = hit_rows[order][first]
        query[rows] = hit_query[order][first]
        similarity[rows] = _cosine(pool.vectors[rows], _queries(out)[1][query[rows]])
        rows = np.sort(rows)
    name = {"neighbours": "retrieval:neighbours", "clusters": "retrieval:clusters"}.get(method, method)
    query_keys = _queries(out)[0] if method in ("neighbours", "clusters") else np.zeros(0, str)
    table = pa.table({
        "key": [pool.keys[r] for r in rows], "uri": [pool.uris[r] for r in rows], "method": [name] * len(rows),
        "query_key": [str(query_keys[query[r]]) if query[r] >= 0 else None for r in rows],
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


def _written(out: Location, config: PipelineConfig, units: list) -> dict:
    parts = tables.done_parts(out, "selection")
    return {partition: {} for partition in units if partition in parts}


STEPS = (
    Step("prepare", prepare, done=_files_done("method.json")),  # written after queries.npz
    Step("scan", scan, units=_partitions, done=_files_done("scan/part-{:05d}.npz")),
    Step("plan", plan, done=_files_done("plan.npz")),
    Step("draw", draw, units=_partitions, done=_files_done("draw/part-{:05d}.npz")),
    Step("limit", limit, done=_files_done("limits.npz")),
    Step("write", write, units=_partitions, done=_written),
    Step("clean", clean),
)
"""The sample stage's shape."""
