"""The dedup stage's kNN path as steps over files: each task holds one partition plus one index shard.

DINOv2 (Sec. 3, "Deduplication"): exact copies (sha256) and kNN neighbours (k = ``dedup.k``) at cosine
``>= dedup.threshold`` are linked, every connected component keeps one image (most pixels, then the
smallest key), and a component holding an image within ``dedup.eval_threshold`` of an evaluation set is
removed whole (``leak:<set>``). The steps, in order, with their units (what one task does):

========== ============================== ===================================================================
step       units                          one task
========== ============================== ===================================================================
prepare    lake partition                 the partition's pool rows in key order (+ eval rows, + vector sum)
train      one                            index plan, mean, coarse quantiser trained on a seeded sample
assign     query partition (IVF only)     the inverted lists each row visits (reused by every shard)
add        index shard (collection, s)    one shard of the pool (or of an evaluation set) indexed
search     (query part, collection, s)    one query partition against one shard: top-k above threshold
exact      sha256 bucket                  byte-identical rows of one digest bucket linked
merge      query partition                the shards' top-k merged: ``links`` (+ ``leaks`` hits)
components one                            union-find over all links (a few integers per image), keep rule
write      lake partition                 the partition's ``duplicates`` part
========== ============================== ===================================================================

``curate/stages.py`` declares them as the dedup stage's steps (``DEDUP_STEPS``, with ``exact`` run before
``merge`` so no task receives the many search results) plus a last ``clean``; :func:`run_all` is the same
sequence in one process. Every step reads and writes files under ``OUT/work/dedup`` (:data:`WORK`) with deterministic names, so a
rerun or rescheduled task writes the same bytes; arguments and results are small. Global ids number the
pool rows partition by partition, in key order within each partition, so the ``group`` column (the id of
the group's kept image) equals today's "row in key order" when the lake has one partition.

Other descriptors (issue 22's copy descriptors) use the same steps: pass a :class:`Layout` whose ``vectors``
names the folder of per-partition ``part-NNNNN.npy`` matrices, row ``row`` of the ``embeddings``
part being the key's descriptor (the layout the embed stage writes)::

    layout = Layout(work="work/copy-knn", vectors="tables/copy-descriptors")
    for p in partitions: prepare(out, config, p, layout)
    train(out, config, layout)
    ...                                       # assign, add, search, exact, merge, components, write
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dinolab.curate import components as cc
from dinolab.curate import knn, output, tables
from dinolab.curate.output import Location
from dinolab.schemas.config import PipelineConfig
from dinolab.schemas.tables import DUPLICATES

WORK = "work/dedup"
WORK_FILES = tuple(f"{WORK}/{name}" for name in (
    "rows/part-*.parquet", "eval/part-*.parquet", "sums/part-*.npy", "plan.json", "trained.index", "index/*.index",
    "assign/part-*.npz",
    "search/*.npz", "links/part-*.parquet", "leaks/part-*.parquet", "exact/part-*.parquet", "groups/part-*.npz",
    "winners.parquet"))
"""Glob patterns (relative to ``OUT``) of every file the steps write under :data:`WORK`: the stage's ``files``."""
EXACT_BUCKET = 4_000_000
"""Pool rows per sha256 bucket of the exact-copy step (one bucket's digests are held at once)."""
POOL = 0
"""Collection number of the pool; evaluation sets are 1, 2, ... in name order."""


@dataclass(frozen=True)
class Layout:
    """Where the steps keep their files (``work``) and read descriptor matrices: ``vectors``/part-NNNNN.npy, or
    the embed stage's matrices (:func:`curate.tables.read_array`) when ``vectors`` is ``None``."""

    work: str = WORK
    vectors: str | None = None


EMBEDDINGS = Layout()


def _path(out: Location, layout: Layout, *names: str) -> Location:
    return output.join(out, *layout.work.split("/"), *names)


def _write_table(path: Location, table: pa.Table) -> None:
    output.publish(path, lambda stream: pq.write_table(table, stream, compression="zstd"))


def _read_table(path: Location, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(output.readable(path), columns=columns)


def _write_npz(path: Location, **arrays: np.ndarray) -> None:
    output.publish(path, lambda stream: np.savez(stream, **arrays))


def _read_npz(path: Location) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(output.read_bytes(path))) as data:
        return {name: data[name] for name in data.files}


def _matrix(out: Location, layout: Layout, partition: int) -> np.ndarray:
    if layout.vectors is None:
        return tables.read_array(out, "embeddings", partition)
    path = output.join(out, *layout.vectors.split("/"), f"part-{partition:05d}.npy")
    if isinstance(path, output.RemotePath):
        return np.load(output.readable(path), allow_pickle=False)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _load_index(path: Location):
    """A saved faiss index: read straight from a local file, through one download from a store."""
    if isinstance(path, output.RemotePath):
        return knn.index_from_bytes(output.read_bytes(path))
    return faiss.read_index(str(path))


def _vectors(out: Location, layout: Layout, partition: int, rows: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """Unit descriptors (minus ``mean``) of ``rows`` of the partition's matrix."""
    matrix = _matrix(out, layout, partition)
    return knn.unit_rows(np.asarray(matrix[np.asarray(rows, np.int64)], dtype=np.float32), mean)


# -- prepare: per partition ---------------------------------------------------------------------------------


def partitions(out: Location) -> list[int]:
    """Partitions with an ``embeddings`` part: the units of ``prepare`` and ``write``."""
    return sorted(tables.done_parts(out, "embeddings"))


def prepare(out: Location, config: PipelineConfig, partition: int, layout: Layout = EMBEDDINGS) -> dict[str, int]:
    """Pool rows of the partition in key order (``key, uri, sha256, pixels, row``), evaluation rows (``set, row``)
    and, with ``dedup.center``, the float64 sum of its pool vectors."""
    rows = tables.read_part(out, "embeddings", partition)
    images = tables.read_part(out, "images", partition)
    rows = rows.take(pc.sort_indices(rows, [("key", "ascending")]))
    pool = rows.filter(pc.equal(rows["role"], "pool"))
    found = images.take(pc.index_in(pool["key"], value_set=images["key"]))
    pixels = pc.multiply(pc.cast(pc.fill_null(found["width"], 0), pa.int64()),
                         pc.cast(pc.fill_null(found["height"], 0), pa.int64()))
    pool_rows = pa.table({"key": pool["key"], "uri": found["uri"], "sha256": found["sha256"], "pixels": pixels,
                          "row": pool["row"]})
    evals = rows.filter(pc.equal(rows["role"], "eval"))
    evals = pa.table({"set": pc.cast(evals["set"], pa.string()), "key": evals["key"], "row": evals["row"]})
    evals = evals.take(pc.sort_indices(evals, [("set", "ascending"), ("key", "ascending")]))
    if config.dedup.center:
        matrix = _matrix(out, layout, partition)
        total = np.asarray(matrix[pool["row"].to_numpy()], dtype=np.float64).sum(axis=0) if len(pool) else \
            np.zeros(matrix.shape[1], np.float64)
        output.publish(_path(out, layout, "sums", f"part-{partition:05d}.npy"), lambda s: np.save(s, total))
    _write_table(_path(out, layout, "eval", f"part-{partition:05d}.parquet"), evals.select(["set", "row"]))
    _write_table(_path(out, layout, "rows", f"part-{partition:05d}.parquet"), pool_rows)  # last: marks it done
    return {"pool": len(pool_rows), "eval": len(evals)}


def _rows(out: Location, layout: Layout, partition: int, columns: list[str] | None = None) -> pa.Table:
    return _read_table(_path(out, layout, "rows", f"part-{partition:05d}.parquet"), columns)


def _row_count(path: Location) -> int:
    return pq.ParquetFile(output.readable(path)).metadata.num_rows


# -- train: one task ---------------------------------------------------------------------------------------


def train(out: Location, config: PipelineConfig, layout: Layout = EMBEDDINGS) -> dict[str, int]:
    """The index plans (pool, then each evaluation set), the pool mean, and the trained coarse quantiser."""
    parts = partitions(out)
    if not parts:
        raise tables.SchemaError(f"{tables.table_dir(out, 'embeddings')}: no embeddings yet; run the embed stage")
    counts = {p: _row_count(_path(out, layout, "rows", f"part-{p:05d}.parquet")) for p in parts}
    dim = int(_matrix(out, layout, parts[0]).shape[1]) if parts else 0
    settings = config.dedup
    plan = knn.plan_index(counts, dim, settings.index, settings.shard_vectors)
    mean = None
    if settings.center and plan.total:
        total = sum(np.load(output.readable(_path(out, layout, "sums", f"part-{p:05d}.npy"))) for p in parts)
        mean = (total / plan.total).astype(np.float32)
    eval_counts: dict[str, dict[int, int]] = {}
    for p in parts:
        sets = _read_table(_path(out, layout, "eval", f"part-{p:05d}.parquet"), ["set"])["set"]
        for name, count in zip(*np.unique(np.array(sets.to_pylist(), dtype=object), return_counts=True)):
            eval_counts.setdefault(str(name), {})[p] = int(count)
    eval_plans = {}
    for name in sorted(eval_counts):
        kind = knn.resolve_kind(settings.index, sum(eval_counts[name].values()))
        if kind in ("ivf", "ivfpq"):  # evaluation shards reuse the pool's trained quantiser
            kind = plan.kind if plan.kind in ("ivf", "ivfpq") else "flat"
        set_plan = knn.plan_index(eval_counts[name], dim, kind, settings.shard_vectors)
        eval_plans[name] = knn.IndexPlan(kind, dim, plan.nlist, set_plan.shards, set_plan.offsets, set_plan.counts,
                                         plan.pq_bytes).to_dict()
    sample = knn.sample_ids(plan, seed=0)
    trained = knn.train_index(plan, _gather(out, layout, plan, sample, mean))
    output.publish(_path(out, layout, "trained.index"), lambda stream: knn.write_index(trained, stream))
    text = json.dumps({"pool": plan.to_dict(), "eval": eval_plans, "mean": None if mean is None else mean.tolist()},
                      sort_keys=True)
    output.write_bytes(_path(out, layout, "plan.json"), text.encode())
    return {"pool": plan.total, "shards": len(plan.shards), "eval_sets": len(eval_plans)}


def _gather(out: Location, layout: Layout, plan: knn.IndexPlan, ids: np.ndarray,
            mean: np.ndarray | None) -> np.ndarray:
    """Unit descriptors of the pool's global ``ids`` (sorted), read partition by partition."""
    if not len(ids):
        return np.zeros((0, plan.dim), np.float32)
    where = plan.partition_of(ids)
    chunks = []
    for part in np.unique(where):
        local = ids[where == part] - plan.offsets[int(part)]
        rows = _rows(out, layout, int(part), ["row"])["row"].to_numpy()[local]
        chunks.append(_vectors(out, layout, int(part), rows, mean))
    return np.concatenate(chunks)


@dataclass(frozen=True)
class Plan:
    """What ``train`` decided: the pool's and each evaluation set's index plan, and the mean (or None)."""

    pool: knn.IndexPlan
    evals: dict[str, knn.IndexPlan]
    mean: np.ndarray | None

    def collection(self, number: int) -> knn.IndexPlan:
        return self.pool if number == POOL else self.evals[sorted(self.evals)[number - 1]]

    def set_name(self, number: int) -> str:
        return sorted(self.evals)[number - 1]

    def shards(self) -> list[tuple[int, int]]:
        """Every ``(collection, shard)``: the pool's shards, then each evaluation set's."""
        found = [(POOL, s) for s in range(len(self.pool.shards))]
        for number, name in enumerate(sorted(self.evals), start=1):
            found += [(number, s) for s in range(len(self.evals[name].shards))]
        return found


def read_plan(out: Location, layout: Layout = EMBEDDINGS) -> Plan:
    data = json.loads(output.read_bytes(_path(out, layout, "plan.json")))
    mean = None if data["mean"] is None else np.asarray(data["mean"], np.float32)
    return Plan(knn.IndexPlan.from_dict(data["pool"]),
                {name: knn.IndexPlan.from_dict(plan) for name, plan in data["eval"].items()}, mean)


# -- add: one task per index shard ---------------------------------------------------------------------------


def _shard_path(out: Location, layout: Layout, collection: int, shard: int) -> Location:
    return _path(out, layout, "index", f"c{collection:03d}-s{shard:05d}.index")


def add_units(out: Location, layout: Layout = EMBEDDINGS) -> list[tuple[int, int]]:
    return read_plan(out, layout).shards()


def add(out: Location, config: PipelineConfig, unit: tuple[int, int], layout: Layout = EMBEDDINGS) -> dict[str, int]:
    """Index shard ``unit = (collection, shard)``: its partitions' unit descriptors under their ids."""
    collection, number = unit
    plan = read_plan(out, layout)
    index_plan = plan.collection(collection)
    if index_plan.kind in ("ivf", "ivfpq"):
        trained = _load_index(_path(out, layout, "trained.index"))
    else:
        trained = knn.train_index(index_plan, np.zeros((0, index_plan.dim), np.float32))

    def parts():
        for part in index_plan.shards[number]:
            if collection == POOL:
                rows = _rows(out, layout, part, ["row"])["row"].to_numpy()
            else:
                evals = _read_table(_path(out, layout, "eval", f"part-{part:05d}.parquet"))
                rows = evals.filter(pc.equal(evals["set"], plan.set_name(collection)))["row"].to_numpy()
            yield np.arange(len(rows), dtype=np.int64) + index_plan.offsets[part], _vectors(out, layout, part, rows,
                                                                                           plan.mean)

    shard = knn.add_to_shard(trained, parts())
    output.publish(_shard_path(out, layout, collection, number), lambda stream: knn.write_index(shard, stream))
    return {"vectors": int(shard.ntotal)}


# -- assign: one task per query partition (IVF) ----------------------------------------------------------------


def assign_units(out: Location, layout: Layout = EMBEDDINGS) -> list[int]:
    """Query partitions, when the pool index is an IVF (its coarse quantiser serves every shard)."""
    return merge_units(out, layout) if read_plan(out, layout).pool.kind in ("ivf", "ivfpq") else []


def assign(out: Location, config: PipelineConfig, query: int, layout: Layout = EMBEDDINGS) -> dict[str, int]:
    """The inverted lists (and centroid similarities) each row of pool partition ``query`` visits."""
    plan = read_plan(out, layout)
    trained = _load_index(_path(out, layout, "trained.index"))
    rows = _rows(out, layout, query, ["row"])["row"].to_numpy()
    lists, sims = knn.coarse_lists(trained, _vectors(out, layout, query, rows, plan.mean), config.dedup.nprobe)
    _write_npz(_path(out, layout, "assign", f"part-{query:05d}.npz"), lists=lists, sims=sims)
    return {"rows": len(rows)}


# -- search: one task per (query partition, shard); merge: one per query partition -------------------------------


def search_units(out: Location, layout: Layout = EMBEDDINGS) -> list[tuple[int, int, int]]:
    plan = read_plan(out, layout)
    queries = [p for p in sorted(plan.pool.counts) if plan.pool.counts[p]]
    return [(q, c, s) for q in queries for c, s in plan.shards()]


def _search_path(out: Location, layout: Layout, unit: tuple[int, int, int]) -> Location:
    query, collection, shard = unit
    return _path(out, layout, "search", f"q{query:05d}-c{collection:03d}-s{shard:05d}.npz")


def search(out: Location, config: PipelineConfig, unit: tuple[int, int, int],
           layout: Layout = EMBEDDINGS) -> dict[str, int]:
    """Pool partition ``query`` against shard ``(collection, shard)``: each row's top-k links above threshold
    (``k + 1`` at ``dedup.threshold`` in the pool, the best match at ``dedup.eval_threshold`` in an evaluation set)."""
    query, collection, shard = unit
    plan = read_plan(out, layout)
    index = _load_index(_shard_path(out, layout, collection, shard))
    rows = _rows(out, layout, query, ["row"])["row"].to_numpy()
    ids = np.arange(len(rows), dtype=np.int64) + plan.pool.offsets[query]
    settings = config.dedup
    if collection == POOL:
        k, threshold = min(settings.k, max(plan.pool.total - 1, 1)) + 1, settings.threshold
    else:
        k, threshold = 1, settings.eval_threshold
    lists = None
    if query in assign_units(out, layout) and plan.collection(collection).kind in ("ivf", "ivfpq"):
        data = _read_npz(_path(out, layout, "assign", f"part-{query:05d}.npz"))
        lists = data["lists"], data["sims"]
    found = knn.search_shard(index, ids, _vectors(out, layout, query, rows, plan.mean), k, threshold, settings.nprobe,
                             lists=lists)
    _write_npz(_search_path(out, layout, unit), query=found.query, neighbor=found.neighbor,
               similarity=found.similarity)
    return {"links": len(found)}


def merge_units(out: Location, layout: Layout = EMBEDDINGS) -> list[int]:
    plan = read_plan(out, layout)
    return [p for p in sorted(plan.pool.counts) if plan.pool.counts[p]]


def merge(out: Location, config: PipelineConfig, query: int, layout: Layout = EMBEDDINGS) -> dict[str, int]:
    """Query partition ``query``'s links (``first < second``, top ``k + 1`` over every pool shard) and its
    evaluation hits (``id``, ``collection``)."""
    plan = read_plan(out, layout)
    found: dict[int, list[knn.Links]] = {}
    for collection, shard in plan.shards():
        data = _read_npz(_search_path(out, layout, (query, collection, shard)))
        found.setdefault(collection, []).append(knn.Links(data["query"], data["neighbor"], data["similarity"]))
    k = min(config.dedup.k, max(plan.pool.total - 1, 1)) + 1
    links = knn.pool_links(knn.merge_top_k(found.get(POOL, []), k))
    hit_ids, hit_sets = [], []
    for collection in sorted(c for c in found if c != POOL):
        hits = np.unique(knn.Links.concat(found[collection]).query)
        hit_ids.append(hits)
        hit_sets.append(np.full(len(hits), collection, np.int32))
    _write_table(_path(out, layout, "leaks", f"part-{query:05d}.parquet"),
                 pa.table({"id": np.concatenate(hit_ids) if hit_ids else np.zeros(0, np.int64),
                           "collection": np.concatenate(hit_sets) if hit_sets else np.zeros(0, np.int32)}))
    _write_table(_path(out, layout, "links", f"part-{query:05d}.parquet"),
                 pa.table({"first": links.query, "second": links.neighbor, "similarity": links.similarity}))
    return {"links": len(links)}


# -- exact: one task per sha256 bucket ------------------------------------------------------------------------


def exact_units(out: Location, layout: Layout = EMBEDDINGS) -> list[int]:
    return list(range(min(256, max(1, math.ceil(read_plan(out, layout).pool.total / EXACT_BUCKET)))))


def exact(out: Location, config: PipelineConfig, bucket: int, layout: Layout = EMBEDDINGS) -> dict[str, int]:
    """Links from every pool row to the smallest id with the same sha256, for digests of one bucket (by the
    digest's first byte)."""
    plan = read_plan(out, layout)
    buckets = len(exact_units(out, layout))
    prefixes = pa.array([f"{i:02x}" for i in range(256)])
    digests, ids = [], []
    for part in sorted(plan.pool.counts):
        sha = _rows(out, layout, part, ["sha256"])["sha256"]
        if buckets == 1:
            positions = np.flatnonzero(pc.is_valid(sha).to_numpy(zero_copy_only=False))
        else:
            first_byte = pc.index_in(pc.utf8_slice_codeunits(pc.utf8_lower(sha), 0, 2), value_set=prefixes)
            first_byte = pc.fill_null(first_byte, -1).to_numpy(zero_copy_only=False)
            positions = np.flatnonzero((first_byte >= 0) & (first_byte % buckets == bucket))
        digests.append(sha.take(pa.array(positions)))
        ids.append(positions.astype(np.int64) + plan.pool.offsets[part])
    table = pa.table({"sha256": pa.chunked_array(digests, pa.string()),
                      "id": np.concatenate(ids) if ids else np.zeros(0, np.int64)})
    table = table.take(pc.sort_indices(table, [("sha256", "ascending"), ("id", "ascending")]))
    sha, id_ = table["sha256"], table["id"].to_numpy()
    same = np.zeros(len(id_), bool)
    if len(id_) > 1:
        same[1:] = pc.equal(sha.slice(1), sha.slice(0, len(id_) - 1)).to_numpy(zero_copy_only=False)
    starts = np.maximum.accumulate(np.where(~same, np.arange(len(id_)), 0)) if len(id_) else np.zeros(0, np.int64)
    first, second = id_[starts][same], id_[same]
    _write_table(_path(out, layout, "exact", f"part-{bucket:05d}.parquet"),
                 pa.table({"first": first, "second": second, "similarity": np.ones(len(first), np.float32)}))
    return {"links": len(first)}


# -- components: one task ---------------------------------------------------------------------------------------


def components(out: Location, config: PipelineConfig, layout: Layout = EMBEDDINGS) -> dict[str, int]:
    """Union-find over every link; per partition the kept id of each row's component and its leak (collection
    number, 0 for none); the winners (``kept, kept_key, kept_sha256``, by id) of components of two or more.

    Holds one parent per pool image (``int32``) and one byte; everything else is per grouped image (those in
    a component of two or more) or per partition."""
    plan = read_plan(out, layout)
    total = plan.pool.total
    parent = cc.forest(total)
    sources = [("links", q) for q in merge_units(out, layout)] + [("exact", b) for b in exact_units(out, layout)]
    for folder, number in sources:  # the parts this plan made, never a stale one of an earlier run
        links = _read_table(_path(out, layout, folder, f"part-{number:05d}.parquet"), ["first", "second"])
        cc.join(parent, links["first"].to_numpy(), links["second"].to_numpy())
    roots = cc.labels(parent)
    grouped = np.flatnonzero(cc.in_groups(roots))
    parts = sorted(plan.pool.counts)
    part_of = plan.pool.partition_of(grouped)
    pixels = np.zeros(len(grouped), np.int64)
    for part in np.unique(part_of):
        where = np.flatnonzero(part_of == part)
        column = _rows(out, layout, int(part), ["pixels"])["pixels"].to_numpy()
        pixels[where] = column[grouped[where] - plan.pool.offsets[int(part)]]
    # the keep rule: most pixels, then smallest key; ids follow key order inside a partition, so the best row
    # of each (component, partition) is found with integers and only those rows' keys are compared
    chosen = cc.best_per_component(roots[grouped].astype(np.int64) * (max(parts, default=0) + 1) + part_of, grouped,
                                   -pixels)
    local, local_pixels = grouped[chosen], pixels[chosen]
    keys = np.empty(len(local), dtype=object)
    digests = np.empty(len(local), dtype=object)
    local_part = plan.pool.partition_of(local)
    for part in np.unique(local_part):
        where = np.flatnonzero(local_part == part)
        taken = _rows(out, layout, int(part), ["key", "sha256"]).take(pa.array(local[where] - plan.pool.offsets[int(part)]))
        keys[where] = taken["key"].to_pylist()
        digests[where] = taken["sha256"].to_pylist()
    key_rank = np.argsort(np.argsort(keys, kind="stable"), kind="stable") if len(keys) else np.zeros(0, np.int64)
    best = cc.best_per_component(roots[local], local, -local_pixels, key_rank)
    winners = local[best]  # sorted by their component's root
    winner_roots = roots[winners]
    leak_roots, leak_sets = _leaking_roots(out, layout, roots)
    for part in parts:
        start, count = plan.pool.offsets[part], plan.pool.counts[part]
        part_roots = roots[start:start + count]
        kept = part_roots.astype(np.int64)  # the kept id of each row's component: singletons keep themselves
        mine = grouped[(grouped >= start) & (grouped < start + count)]
        kept[mine - start] = winners[np.searchsorted(winner_roots, roots[mine])]
        leak = np.zeros(count, np.int32)
        if len(leak_roots):
            at = np.minimum(np.searchsorted(leak_roots, part_roots), len(leak_roots) - 1)
            hit = leak_roots[at] == part_roots
            leak[hit] = leak_sets[at[hit]]
        _write_npz(_path(out, layout, "groups", f"part-{part:05d}.npz"), kept=kept, leak=leak)
    by_id = np.argsort(winners)
    _write_table(_path(out, layout, "winners.parquet"),
                 pa.table({"kept": winners[by_id].astype(np.int64),
                           "kept_key": pa.array(list(keys[best][by_id]), pa.string()),
                           "kept_sha256": pa.array(list(digests[best][by_id]), pa.string())}))
    return {"groups": cc.component_count(roots), "duplicate_groups": len(winners)}


def _leaking_roots(out: Location, layout: Layout, roots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The roots of components with a row that matches an evaluation set (sorted), and the first such set (in
    name order, i.e. the smallest collection number) of each."""
    hits = [_read_table(_path(out, layout, "leaks", f"part-{q:05d}.parquet")) for q in merge_units(out, layout)]
    hits = pa.concat_tables(hits) if hits else None
    if hits is None or not hits.num_rows:
        return np.zeros(0, roots.dtype), np.zeros(0, np.int32)
    leaking = roots[hits["id"].to_numpy()]
    collections = hits["collection"].to_numpy().astype(np.int32)
    order = np.lexsort((collections, leaking))
    leaking, collections = leaking[order], collections[order]
    first = np.r_[True, leaking[1:] != leaking[:-1]]
    return leaking[first], collections[first]


# -- write: one task per partition ------------------------------------------------------------------------------


def write(out: Location, config: PipelineConfig, partition: int, layout: Layout = EMBEDDINGS) -> dict[str, int]:
    """The partition's ``duplicates`` part: group (kept id), kept, reason, kept_key, cosine to the kept image."""
    plan = read_plan(out, layout)
    rows = _rows(out, layout, partition)
    groups = _read_npz(_path(out, layout, "groups", f"part-{partition:05d}.npz"))
    count, start = len(rows), plan.pool.offsets.get(partition, 0)
    group, leak = groups["kept"], groups["leak"]
    ids = np.arange(count, dtype=np.int64) + start
    keys, digests = rows["key"].to_pylist(), rows["sha256"].to_pylist()
    kept_key, kept_sha = list(keys), list(digests)
    others = np.flatnonzero(group != ids)
    if len(others):
        winners = _read_table(_path(out, layout, "winners.parquet"))
        found = pa.array(np.searchsorted(winners["kept"].to_numpy(), group[others]))
        for row, key, sha in zip(others.tolist(), winners["kept_key"].take(found).to_pylist(),
                                 winners["kept_sha256"].take(found).to_pylist()):
            kept_key[row], kept_sha[row] = key, sha
    own = _vectors(out, layout, partition, rows["row"].to_numpy(), plan.mean) if count else None
    similarity = np.zeros(count, np.float32)
    if count:
        kept_vectors = own.copy()
        outside = others[plan.pool.partition_of(group[others]) != partition] if len(others) else others
        inside = np.setdiff1d(others, outside)
        kept_vectors[inside] = own[group[inside] - start]
        where = plan.pool.partition_of(group[outside])
        for part in np.unique(where):
            chosen = outside[where == part]
            part_rows = _rows(out, layout, int(part), ["row"])["row"].to_numpy()
            kept_vectors[chosen] = _vectors(out, layout, int(part),
                                            part_rows[group[chosen] - plan.pool.offsets[int(part)]], plan.mean)
        similarity = np.einsum("ij,ij->i", own, kept_vectors).astype(np.float32)
    is_kept = group == ids
    reason: list[str | None] = [None if is_kept[row] else ("exact" if digests[row] == kept_sha[row] else "copy")
                                for row in range(count)]
    kept = is_kept.copy()
    for row in np.flatnonzero(leak):
        reason[row] = f"leak:{plan.set_name(int(leak[row]))}"
        kept[row] = False
    table = pa.table({"key": rows["key"], "uri": rows["uri"], "group": group.astype(np.int64), "kept": kept,
                      "reason": reason, "kept_key": pa.array(kept_key, pa.string()),
                      "similarity": similarity}, schema=DUPLICATES.schema)
    tables.write_part(out, "duplicates", partition, table)
    return {"in": count, "out": int(kept.sum())}


def clean(out: Location, layout: Layout = EMBEDDINGS) -> None:
    """Remove every work file once the ``duplicates`` parts exist; ``plan.json`` last (see :func:`finished`)."""
    patterns = [f"{layout.work}/{p.removeprefix(WORK + '/')}" for p in WORK_FILES]
    for pattern in sorted(patterns, key=lambda p: p.endswith("plan.json")):
        output.remove_matching(out, pattern)
    folder = _path(out, layout)
    output.remove_empty_folders(folder)  # the work folder, then work/ when nothing else is in it


def finished(out: Location, layout: Layout = EMBEDDINGS) -> bool:
    """Whether the last run of the steps completed: ``duplicates`` part 0 exists and no plan is left behind."""
    return 0 in tables.done_parts(out, "duplicates") and not output.is_file(_path(out, layout, "plan.json"))


STEP_FILES = {
    "prepare": "rows/part-{unit:05d}.parquet", "train": "plan.json", "assign": "assign/part-{unit:05d}.npz",
    "add": "index/c{unit[0]:03d}-s{unit[1]:05d}.index",
    "search": "search/q{unit[0]:05d}-c{unit[1]:03d}-s{unit[2]:05d}.npz", "merge": "links/part-{unit:05d}.parquet",
    "exact": "exact/part-{unit:05d}.parquet", "components": "winners.parquet",
}
"""The file whose existence says a unit of a step is done (each step writes it last)."""


def done_units(step: str, out: Location, units: list, layout: Layout = EMBEDDINGS) -> list:
    """The ``units`` of ``step`` whose last file exists (one listing per folder)."""
    template = STEP_FILES[step]
    folder, _, _ = template.rpartition("/")
    present = set(output.names(_path(out, layout, *folder.split("/")) if folder else _path(out, layout)))
    return [unit for unit in units if template.format(unit=unit).rpartition("/")[2] in present]


def run_all(out: Location, config: PipelineConfig, layout: Layout = EMBEDDINGS) -> dict[str, int]:
    """Every step in order, one unit after another, in this process (the plain loop a scheduler spreads out)."""
    for part in partitions(out):
        prepare(out, config, part, layout)
    train(out, config, layout)
    for query in assign_units(out, layout):
        assign(out, config, query, layout)
    for unit in add_units(out, layout):
        add(out, config, unit, layout)
    for unit in search_units(out, layout):
        search(out, config, unit, layout)
    for bucket in exact_units(out, layout):
        exact(out, config, bucket, layout)
    for query in merge_units(out, layout):
        merge(out, config, query, layout)
    components(out, config, layout)
    counts = [write(out, config, part, layout) for part in partitions(out)]
    return {"in": sum(c["in"] for c in counts), "out": sum(c["out"] for c in counts)}
