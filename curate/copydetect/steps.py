"""The dedup stage's copy detection as steps over files: each task holds one or two partitions' features.

The same rules as :func:`.pipeline.copy_duplicates_table` (which holds the whole pool in one process), split
into tasks whose memory is bounded by a partition's features (``n_p`` images, ~0.5 MB each) plus one index.
Every pool image gets a global id: its row in key order over the whole pool (as the single-task table numbers
them), so the ``group`` column is the same. Steps in order (``P``: per pool partition, ``1``: one task):

==========  =========  ===================================================================================
step        units      one task
==========  =========  ===================================================================================
prepare     partition  pool rows in key order (key, uri, sha256, pixels), evaluation rows, hash codes
plan        1          pool and evaluation counts per partition, the seeded sample of ``vlad_sample`` ids
ids         P          global ids: each key's rank among every partition's keys (key columns, one at a time)
templates   1          the lake-template index: raw descriptors of the sample (:mod:`.templates`)
flags       P          each descriptor's template flag, against the sample index
vocabulary  1          the VLAD model (vocabulary, whitening) learned on the sample's content features
vlad        P          VLAD vectors (and mirrored) of the partition
describe    partition  copy descriptors (checkpoint rule only), pool and evaluation rows
whiten      1          PCA-whitening on a seeded sample of pool descriptors (checkpoint rule, optional)
block       (q, d)     query partition ``q`` against partition ``d``: each query descriptor's 5 nearest in
                       ``d`` (pool, and each evaluation set), hash pairs (``q <= d``), evaluation hash and
                       sha256 hits, the VLAD (and descriptor) top-k in ``d``
merge       P          the blocks of ``q`` merged: top 5 per descriptor, then votes and the per-image caps;
                       VLAD / descriptor top-k; evaluation candidates
degree      P          neighbours per image among the hash pairs (the frequent-code filter)
rank        P          VLAD pairs ranked per image (the ``global_candidates`` cap on either side)
collect     P          every candidate pair whose lower partition is this one, by the other's partition
verify      (a, b, c)  chunk ``c`` of the pairs between partitions ``a <= b`` verified (:func:`.verify_block`)
leaks       P          evaluation candidates of the partition verified at the looser threshold
exact       bucket     sha256 links (every row to the smallest id of its digest), one digest bucket
components  1          structural filter, union-find, keep rule, strongest link, leaks (integers per image)
write       partition  the partition's ``duplicates`` part
clean       1          the work folder goes (``plan.json`` last)
==========  =========  ===================================================================================

Candidates are exact where the single task's are: nearest neighbours are merged by distance over the
blocks, and caps are applied after the merge. With ``vlad_sample`` at least the pool size, the templates
are learned on the whole pool and the table equals the single task's; above it, a descriptor is template
when near twins sit in ``burst_images`` images of the sample.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterable

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dinolab.curate import components as cc
from dinolab.curate import fetched, knn, output, tables
from dinolab.curate.copydetect.candidates import descriptor_index, descriptor_neighbours, vote_pairs
from dinolab.curate.copydetect.features import ImageFeatures, partition_features
from dinolab.curate.copydetect.groups import structural_links
from dinolab.curate.copydetect.hashes import HASHES, cross_hash_pairs, hamming, hash_codes, hash_pairs
from dinolab.curate.copydetect.local import LocalFeatures
from dinolab.curate.copydetect.pipeline import VERIFY_BLOCK, verify_block, verify_config
from dinolab.curate.copydetect.templates import bursty_flags, content_features
from dinolab.curate.copydetect.verify import verify_pair
from dinolab.curate.copydetect.vlad import VladModel, best_pairs, top_ranked
from dinolab.curate.output import Location
from dinolab.curate.steps import Step
from dinolab.schemas.config import PipelineConfig
from dinolab.schemas.tables import DUPLICATES

WORK = "work/copydetect"
FOLDERS = ("rows", "evals", "codes", "ids", "flags", "vlad", "descriptors", "blocks", "hashes", "merged", "degree",
           "ranked", "pairs", "verified", "leaks", "exact", "groups")
TOP_FILES = ("sample.npy", "templates.index", "templates.npz", "vlad.npz", "whitening.npz", "winners.parquet")
WORK_FILES = (*(f"{WORK}/{folder}/*" for folder in FOLDERS), *(f"{WORK}/{name}" for name in TOP_FILES),
              f"{WORK}/plan.json")
"""Everything the steps write besides the ``duplicates`` parts (the stage's ``files``)."""
NEIGHBOURS = 5
"""Nearest descriptors per query descriptor that vote (as :func:`.candidates.vote_candidates`)."""
EXACT_BUCKET = 4_000_000
"""Pool rows per sha256 bucket of the exact step."""
REASONS = (None, "exact", "near", "copy")
"""Reason codes 0-3 of the ``groups`` files; ``4 + i`` is a leak to the ``i``-th evaluation set (name order)."""
KIND = {"near": 1, "copy": 2}


# -- files ------------------------------------------------------------------------------------------------


def _at(out: Location, *names: str) -> Location:
    return output.join(out, *WORK.split("/"), *names)


def _part(folder: str, partition: int, suffix: str = ".npz") -> str:
    return f"{folder}/part-{partition:05d}{suffix}"


def _save(path: Location, **arrays: np.ndarray) -> None:
    output.publish(path, lambda stream: np.savez(stream, **arrays))


def _load(path: Location) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(output.read_bytes(path)), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _write_table(path: Location, table: pa.Table) -> None:
    output.publish(path, lambda stream: pq.write_table(table, stream, compression="zstd"))


def _read_table(path: Location, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(output.readable(path), columns=columns)


def _block_name(unit: tuple[int, int]) -> str:
    return f"q{unit[0]:05d}-d{unit[1]:05d}.npz"


class Plan:
    """What ``plan`` decided: pool and evaluation rows per partition, the sample, the evaluation set names."""

    def __init__(self, data: dict) -> None:
        self.pool = {int(p): n for p, n in data["pool"].items()}
        self.evals = {name: {int(p): n for p, n in parts.items()} for name, parts in data["evals"].items()}
        self.total = sum(self.pool.values())
        self.sets = sorted(self.evals)
        self.pool_parts = sorted(p for p, n in self.pool.items() if n)
        eval_parts = {p for parts in self.evals.values() for p, n in parts.items() if n}
        self.db_parts = sorted(set(self.pool_parts) | eval_parts)

    def ref_offset(self, name: str, partition: int) -> int:
        """Number of the first reference of set ``name`` in ``partition`` (set order: partition, then row)."""
        return sum(n for p, n in self.evals[name].items() if p < partition)

    def ref_partition(self, name: str, refs: np.ndarray) -> np.ndarray:
        parts = np.array(sorted(self.evals[name]), np.int64)
        starts = np.array([self.ref_offset(name, int(p)) for p in parts], np.int64)
        return parts[np.searchsorted(starts, refs, side="right") - 1] if len(parts) else np.zeros(len(refs), np.int64)


def read_plan(out: Location) -> Plan:
    return Plan(json.loads(output.read_bytes(_at(out, "plan.json"))))


def _ids(out: Location, partition: int) -> np.ndarray:
    return np.load(output.readable(_at(out, _part("ids", partition, ".npy"))), allow_pickle=False)


def _features(out: Location, config: PipelineConfig, partition: int
              ) -> tuple[list[ImageFeatures], dict[str, list[ImageFeatures]]]:
    """The partition's pool features in key order, and its evaluation features per set (table order)."""
    images = tables.read_part(out, "images", partition)
    found = partition_features(out, partition, images, config.ingest.max_pixels,
                               read=fetched.reader(out, config.lake.storage_options, [partition]))
    keys = _read_table(_at(out, _part("rows", partition, ".parquet")), ["key"])["key"].to_pylist()
    evals = _read_table(_at(out, _part("evals", partition, ".parquet")), ["set", "key"])
    by_set: dict[str, list[ImageFeatures]] = {}
    for name, key in zip(evals["set"].to_pylist(), evals["key"].to_pylist()):
        by_set.setdefault(name, []).append(found[key])
    return [found[key] for key in keys], by_set


def _content(out: Location, config: PipelineConfig, partition: int,
             pool: list[ImageFeatures] | None = None) -> list[LocalFeatures]:
    """The partition's pool local features without their lake-template keypoints (:func:`content_features`)."""
    pool = _features(out, config, partition)[0] if pool is None else pool
    local = [f.local for f in pool]
    if config.dedup.burst_images <= 0:
        return local
    flags = _load(_at(out, _part("flags", partition)))["flags"]
    masks = np.split(flags, np.cumsum([len(f.descriptors) for f in local])[:-1]) if local else []
    return [content_features(f, mask) for f, mask in zip(local, masks)]


def _descriptors_only(features: LocalFeatures) -> LocalFeatures:
    """``features`` with its descriptors and keypoints alone (what the sample's models need)."""
    return LocalFeatures(features.xy, features.descriptors, np.zeros((1, 1), np.uint8))


# -- prepare, plan, ids --------------------------------------------------------------------------------------


def prepare(out: Location, config: PipelineConfig, partition: int) -> dict[str, int]:
    """Pool rows in key order (``key, uri, sha256, pixels``), evaluation rows (``set, key, sha256``), hash codes."""
    images = tables.read_part(out, "images", partition)
    found = partition_features(out, partition, images, config.ingest.max_pixels,
                               read=fetched.reader(out, config.lake.storage_options, [partition]))
    ok = images.filter(pc.and_(pc.equal(images["status"], "ok"),
                               pc.is_in(images["key"], pa.array(sorted(found), pa.string()))))
    pool = ok.filter(pc.equal(ok["role"], "pool"))
    pool = pool.append_column("position", pa.array(np.arange(len(pool), dtype=np.int64)))
    order = np.argsort(np.array(pool["key"].to_pylist(), dtype=object), kind="stable").astype(np.int64)
    pool = pool.take(pa.array(order))
    pixels = (pool["width"].to_numpy(zero_copy_only=False).astype(np.int64)
              * pool["height"].to_numpy(zero_copy_only=False).astype(np.int64))
    evals = ok.filter(pc.equal(ok["role"], "eval"))
    evals = pa.table({"set": pa.array([str(s) for s in evals["set"].to_pylist()], pa.string()), "key": evals["key"],
                      "sha256": evals["sha256"]})
    keys, eval_keys = pool["key"].to_pylist(), evals["key"].to_pylist()
    _save(_at(out, _part("codes", partition)),
          **{name: hash_codes([found[k].hashes.get(name) for k in keys]) for name in HASHES},
          **{f"eval_{name}": hash_codes([found[k].hashes.get(name) for k in eval_keys]) for name in HASHES})
    _write_table(_at(out, _part("evals", partition, ".parquet")), evals)
    _write_table(_at(out, _part("rows", partition, ".parquet")),  # last: marks the partition done
                 pa.table({"key": pool["key"], "uri": pool["uri"], "sha256": pool["sha256"], "pixels": pixels,
                           "position": pool["position"]}))
    return {"pool": len(keys), "eval": len(eval_keys)}


def image_partitions(out: Location) -> list[int]:
    return sorted(tables.done_parts(out, "images"))


def plan(out: Location, config: PipelineConfig) -> dict[str, int]:
    """Counts per partition and the seeded sample of pool ids (``vlad_sample``) the lake models learn on."""
    pool, evals = {}, {}
    for part in image_partitions(out):
        pool[part] = pq.ParquetFile(output.readable(_at(out, _part("rows", part, ".parquet")))).metadata.num_rows
        sets = _read_table(_at(out, _part("evals", part, ".parquet")), ["set"])["set"].to_pylist()
        for name, count in zip(*np.unique(np.array(sets, dtype=object), return_counts=True)):
            evals.setdefault(str(name), {})[part] = int(count)
    total = sum(pool.values())
    sample = np.sort(np.random.default_rng(0).permutation(total)[: config.dedup.vlad_sample]).astype(np.int64)
    output.publish(_at(out, "sample.npy"), lambda stream: np.save(stream, sample))
    output.write_bytes(_at(out, "plan.json"), json.dumps({"pool": pool, "evals": evals}, sort_keys=True).encode())
    return {"pool": total, "sample": len(sample)}


def ids(out: Location, config: PipelineConfig, partition: int) -> dict[str, int]:
    """Global ids of the partition's pool rows: their rank in key order over the whole pool (ties: partition
    order), from every partition's key column read one at a time."""
    pool_plan = read_plan(out)
    keys = np.array(_read_table(_at(out, _part("rows", partition, ".parquet")), ["key"])["key"].to_pylist(), object)
    rank = np.arange(len(keys), dtype=np.int64)
    for other in pool_plan.pool_parts:
        if other != partition and len(keys):
            theirs = np.array(_read_table(_at(out, _part("rows", other, ".parquet")), ["key"])["key"].to_pylist(), object)
            rank += np.searchsorted(theirs, keys, side="right" if other < partition else "left")
    output.publish(_at(out, _part("ids", partition, ".npy")), lambda stream: np.save(stream, rank))
    return {"rows": len(rank)}


def _sample(out: Location) -> np.ndarray:
    return np.load(output.readable(_at(out, "sample.npy")), allow_pickle=False)


def _sampled(out: Location, config: PipelineConfig, content: bool) -> tuple[np.ndarray, list[LocalFeatures]]:
    """The sample's ids and local features (content only when ``content``), descriptors alone, in id order."""
    sample = _sample(out)
    found: list[tuple[int, LocalFeatures]] = []
    for part in read_plan(out).pool_parts:
        mine = _ids(out, part)
        chosen = np.flatnonzero(np.isin(mine, sample))
        if not len(chosen):
            continue
        pool = _features(out, config, part)[0]
        local = _content(out, config, part, pool) if content else [f.local for f in pool]
        found += [(int(mine[i]), _descriptors_only(local[i])) for i in chosen]
    found.sort(key=lambda item: item[0])
    return np.array([i for i, _ in found], np.int64), [features for _, features in found]


# -- lake templates -----------------------------------------------------------------------------------------


def templates(out: Location, config: PipelineConfig) -> dict[str, int]:
    """The index of the sample's raw descriptors (and each one's image id) that template flags are found in."""
    sample, local = _sampled(out, config, content=False) if config.dedup.burst_images > 0 else (None, [])
    counts = [len(f.descriptors) for f in local]
    owner = np.repeat(sample, counts).astype(np.int64) if local else np.zeros(0, np.int64)
    if sum(counts):
        vectors = np.ascontiguousarray(np.concatenate([f.descriptors for f in local]), np.float32)
        index = descriptor_index(vectors, nprobe=16)
        output.publish(_at(out, "templates.index"), lambda stream: knn.write_index(index, stream))
    _save(_at(out, "templates.npz"), owner=owner)
    return {"descriptors": len(owner)}


def flags(out: Location, config: PipelineConfig, partition: int) -> dict[str, int]:
    """Per descriptor of the partition's pool images: whether near twins sit in ``burst_images`` other sample images."""
    local = [f.local for f in _features(out, config, partition)[0]]
    counts = [len(f.descriptors) for f in local]
    found = np.zeros(sum(counts), bool)
    owner = _load(_at(out, "templates.npz"))["owner"]
    if config.dedup.burst_images > 0 and len(owner) and sum(counts):
        index = knn.index_from_bytes(output.read_bytes(_at(out, "templates.index")))
        queries = np.ascontiguousarray(np.concatenate([f.descriptors for f in local]), np.float32)
        found = bursty_flags(index, owner, queries, np.repeat(_ids(out, partition), counts), config.dedup.burst_images)
    _save(_at(out, _part("flags", partition)), flags=found)
    return {"template": int(found.sum())}


# -- VLAD ------------------------------------------------------------------------------------------------------


def _vlad_on(config: PipelineConfig, total: int) -> bool:
    return config.dedup.global_candidates > 0 and total >= 3


def vocabulary(out: Location, config: PipelineConfig) -> dict[str, int]:
    """The VLAD vocabulary and whitening, learned on the sample's content features (as ``global_candidates``)."""
    arrays: dict[str, np.ndarray] = {}
    if _vlad_on(config, read_plan(out).total):
        model = VladModel.fit(_sampled(out, config, content=True)[1], config.dedup.vlad_words, config.dedup.vlad_dim, 0)
        arrays["vocabulary"] = model.vocabulary
        if model.whitening is not None:
            writer = faiss.VectorIOWriter()
            faiss.write_VectorTransform(model.whitening, writer)
            arrays["whitening"] = faiss.vector_to_array(writer.data)
    _save(_at(out, "vlad.npz"), **arrays)
    return {"words": len(arrays.get("vocabulary", ()))}


def _vlad_model(out: Location) -> VladModel | None:
    data = _load(_at(out, "vlad.npz"))
    if "vocabulary" not in data:
        return None
    whitening = None
    if "whitening" in data:
        reader = faiss.VectorIOReader()
        faiss.copy_array_to_vector(data["whitening"], reader.data)
        whitening = faiss.read_VectorTransform(reader)
    return VladModel(data["vocabulary"], whitening)


def vlad(out: Location, config: PipelineConfig, partition: int) -> dict[str, int]:
    """VLAD vectors of the partition's content features, and of their mirrors."""
    model = _vlad_model(out)
    local = _content(out, config, partition)
    vectors = model.describe(local)
    mirrored = model.describe([f.mirror if f.mirror is not None else f for f in local])
    _save(_at(out, _part("vlad", partition)), vectors=vectors, mirrored=mirrored)
    return {"vectors": len(vectors)}


# -- copy descriptors (the checkpoint rule) ----------------------------------------------------------------------


def checkpoint_rule(config: PipelineConfig) -> bool:
    return config.dedup.descriptor not in ("local", "embeddings")


def descriptor_model(config: PipelineConfig):
    """What every process running ``describe`` loads once: the copy-descriptor checkpoint."""
    from dinolab.curate.copydetect.descriptor import load_descriptor

    return load_descriptor(config.dedup.descriptor, config.dedup.allow_torchscript)


def describe(out: Location, config: PipelineConfig, partition: int, model) -> dict[str, int]:
    """Copy descriptors of the partition's pool rows (key order) and evaluation rows (table order)."""
    from dinolab.curate.copydetect.stage import descriptors_for

    found = {}
    for name, folder in (("pool", "rows"), ("eval", "evals")):
        uris = _read_table(_at(out, _part(folder, partition, ".parquet")))
        keys = uris["key"].to_pylist()
        images = tables.read_part(out, "images", partition)
        where = pc.index_in(pa.array(keys, pa.string()), value_set=images["key"])
        uris = images["uri"].take(where).to_pylist()
        found[name] = descriptors_for(out, uris, config, model) if uris else np.zeros((0, 0), np.float32)
    _save(_at(out, _part("descriptors", partition)), **found)
    return {"pool": len(found["pool"])}


def whiten(out: Location, config: PipelineConfig) -> dict[str, int]:
    """PCA-whitening on ``dedup.whitening`` seeded pool rows (as :meth:`Whitening.fit_sample`: rows numbered in
    ``images`` table order), when asked."""
    from dinolab.curate.copydetect.descriptor import Whitening

    found = read_plan(out)
    arrays: dict[str, np.ndarray] = {}
    if config.dedup.whitening and found.total > 1:
        rows = np.sort(np.random.default_rng(0).permutation(found.total)[: config.dedup.whitening])
        chosen: list[tuple[np.ndarray, np.ndarray]] = []
        for part in found.pool_parts:
            offset = sum(n for p, n in found.pool.items() if p < part)
            mine = offset + _read_table(_at(out, _part("rows", part, ".parquet")), ["position"])["position"].to_numpy()
            where = np.flatnonzero(np.isin(mine, rows))
            if len(where):
                chosen.append((mine[where], _load(_at(out, _part("descriptors", part)))["pool"][where]))
        order = np.argsort(np.concatenate([c[0] for c in chosen]))
        vectors = np.concatenate([c[1] for c in chosen])[order]
        whitening = Whitening.fit(np.asarray(vectors, np.float64), dim=min(vectors.shape[1], max(1, len(rows) - 1)))
        arrays = {"mean": whitening.mean, "projection": whitening.projection}
    _save(_at(out, "whitening.npz"), **arrays)
    return {"sample": len(arrays)}


def _copy_descriptors(out: Location, partition: int) -> dict[str, np.ndarray]:
    from dinolab.curate.copydetect.descriptor import Whitening

    found = _load(_at(out, _part("descriptors", partition)))
    whitening = _load(_at(out, "whitening.npz"))
    if "mean" in whitening:
        found = {name: Whitening(whitening["mean"], whitening["projection"])(v) if len(v) else v
                 for name, v in found.items()}
    return {name: np.asarray(v, np.float32) for name, v in found.items()}


# -- blocks: query partition x database partition ---------------------------------------------------------------


class Columns:
    """Named columns appended piece by piece, saved as one npz."""

    def __init__(self, **kinds: type) -> None:
        self.kinds = kinds
        self.pieces: dict[str, list[np.ndarray]] = {name: [] for name in kinds}

    def add(self, **values) -> None:
        size = max((np.size(v) for v in values.values() if np.ndim(v)), default=0)
        for name, value in values.items():
            self.pieces[name].append(np.broadcast_to(np.asarray(value, self.kinds[name]), (size,)) if np.ndim(value) == 0
                                     else np.asarray(value, self.kinds[name]))

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.concatenate(self.pieces[name]) if self.pieces[name] else np.zeros(0, kind)
                for name, kind in self.kinds.items()}


def _top(index_vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Inner-product top ``k`` of ``queries`` among ``index_vectors`` (flat, as the single task's kNN)."""
    index = faiss.IndexFlatIP(index_vectors.shape[1])
    index.add(np.ascontiguousarray(index_vectors, np.float32))
    return index.search(np.ascontiguousarray(queries, np.float32), min(k, len(index_vectors)))


def _directed(columns: Columns, rows: np.ndarray, others: np.ndarray, scores: np.ndarray, ids: np.ndarray,
              **extra) -> None:
    rows = np.repeat(rows, scores.shape[1])
    found = others.ravel()
    ok = found >= 0
    columns.add(row=rows[ok], other=ids[found[ok]], score=scores.ravel()[ok], **extra)


def block_units(out: Location) -> list[tuple[int, int]]:
    found = read_plan(out)
    return [(q, d) for q in found.pool_parts for d in found.db_parts]


def block(out: Location, config: PipelineConfig, unit: tuple[int, int]) -> dict[str, int]:
    """Query partition ``q``'s pool against partition ``d``: nearest descriptors (pool and every evaluation set),
    hash pairs, evaluation sha256 / hash hits, VLAD and copy-descriptor top-k."""
    query_part, db_part = unit
    settings, found = config.dedup, read_plan(out)
    query_pool = _features(out, config, query_part)[0]
    query = _content(out, config, query_part, query_pool)
    query_ids = _ids(out, query_part)
    db_pool, db_evals = _features(out, config, db_part)
    db_ids = _ids(out, db_part) if found.pool.get(db_part) else np.zeros(0, np.int64)
    votes = Columns(descriptor=np.int64, query=np.int64, other=np.int64, position=np.int64, distance=np.float32,
                    part=np.int64, set=np.int64)
    hits = Columns(row=np.int64, set=np.int64)
    vlad_links = Columns(row=np.int64, other=np.int64, score=np.float32, mirrored=bool, part=np.int64)
    knn_links = Columns(row=np.int64, other=np.int64, score=np.float32, part=np.int64, set=np.int64)
    pairs = Columns(first=np.int64, second=np.int64, distance=np.int64, part=np.int64)
    codes = _load(_at(out, _part("codes", query_part)))
    db_codes = _load(_at(out, _part("codes", db_part)))
    descriptors = _copy_descriptors(out, query_part) if checkpoint_rule(config) else None
    db_descriptors = _copy_descriptors(out, db_part) if checkpoint_rule(config) else None

    def neighbours(database: list[LocalFeatures], owners: np.ndarray, part: int, set_number: int) -> None:
        descriptor, q, o, position, distance = descriptor_neighbours(query, database, NEIGHBOURS)
        starts = np.concatenate([[0], np.cumsum([len(f.descriptors) for f in database])])[:-1].astype(np.int64)
        votes.add(descriptor=descriptor, query=query_ids[q], other=owners[o], position=position - starts[o],
                  distance=distance, part=part, set=set_number)

    if len(db_ids):
        neighbours(_content(out, config, db_part, db_pool), db_ids, db_part, -1)
        if query_part <= db_part:  # each unordered pair of partitions once
            mine = {name: codes[name] for name in HASHES}
            if query_part == db_part:
                first, second, distance = hash_pairs(mine, settings.hash_distance)
                first, second = query_ids[first], query_ids[second]
            else:
                theirs = {name: db_codes[name] for name in HASHES}
                rows, others = cross_hash_pairs(mine, theirs, settings.hash_distance)
                distance = np.max([hamming(mine[name][rows], theirs[name][others]) for name in HASHES], axis=0) \
                    if len(rows) else np.zeros(0, np.int64)
                first = np.minimum(query_ids[rows], db_ids[others])
                second = np.maximum(query_ids[rows], db_ids[others])
            pairs.add(first=first, second=second, distance=distance, part=db_part)
        if _vlad_on(config, found.total):
            ours, theirs = _load(_at(out, _part("vlad", query_part))), _load(_at(out, _part("vlad", db_part)))
            k = min(settings.k + 1, found.total)
            for mirrored in (False, True):
                scores, others = _top(theirs["vectors"], ours["mirrored" if mirrored else "vectors"], k)
                _directed(vlad_links, query_ids, others, scores, db_ids, mirrored=mirrored, part=db_part)
        if descriptors is not None and len(query_ids):
            k = max(min(settings.k + 1, found.total), min(4, found.total))
            scores, others = _top(db_descriptors["pool"], descriptors["pool"], k)
            _directed(knn_links, query_ids, others, scores, db_ids, part=db_part, set=-1)
    evaluation = _read_table(_at(out, _part("evals", db_part, ".parquet")), ["set", "sha256"])
    for number, name in enumerate(found.sets):
        if not found.evals[name].get(db_part):
            continue
        mine = np.flatnonzero(pc.equal(evaluation["set"], name).to_numpy(zero_copy_only=False))
        refs = found.ref_offset(name, db_part) + np.arange(len(mine), dtype=np.int64)
        neighbours([f.local for f in db_evals[name]], refs, db_part, number)
        digests = set(evaluation["sha256"].take(pa.array(mine)).to_pylist())
        query_digests = _read_table(_at(out, _part("rows", query_part, ".parquet")), ["sha256"])["sha256"].to_pylist()
        hits.add(row=query_ids[[i for i, d in enumerate(query_digests) if d in digests]], set=number)
        rows, _ = cross_hash_pairs({n: codes[n] for n in HASHES}, {n: db_codes[f"eval_{n}"][mine] for n in HASHES},
                                   settings.hash_distance)
        hits.add(row=query_ids[rows], set=number)
        if descriptors is not None and len(query_ids):
            scores, others = _top(db_descriptors["eval"][mine], descriptors["pool"], settings.k)
            _directed(knn_links, query_ids, others, scores, refs, part=db_part, set=number)
    _save(_at(out, "hashes", _block_name(unit)), **pairs.arrays())
    _save(_at(out, "blocks", _block_name(unit)),  # last: marks the block done
          **{f"votes_{n}": v for n, v in votes.arrays().items()}, **{f"hits_{n}": v for n, v in hits.arrays().items()},
          **{f"vlad_{n}": v for n, v in vlad_links.arrays().items()},
          **{f"knn_{n}": v for n, v in knn_links.arrays().items()})
    return {"neighbours": len(votes.arrays()["query"])}


# -- merge: per query partition -----------------------------------------------------------------------------------


def _first_per(group: np.ndarray, order: np.ndarray, count: int) -> np.ndarray:
    """Positions (of ``order``) of the first ``count`` of each run of equal ``group[order]``."""
    grouped = group[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]]) if len(grouped) else np.zeros(0, np.int64)
    rank = np.arange(len(grouped)) - np.repeat(starts, np.diff(np.r_[starts, len(grouped)]))
    return order[rank < count]


def _bias(links: knn.Links, query_ids: np.ndarray, total: int) -> np.ndarray:
    """SSCD score normalisation's bias per query (:func:`.score_norm.background_bias`, self excluded), from each
    query's merged top links (best first)."""
    k = min(4, total)
    bias = np.zeros(len(query_ids), np.float32)
    starts = np.searchsorted(links.query, query_ids)  # links come sorted by query, best first
    for position, (row, start) in enumerate(zip(query_ids.tolist(), starts.tolist())):
        mine = start + np.flatnonzero(links.query[start:start + k] == row)
        others, scores = links.neighbor[mine], links.similarity[mine]
        own = np.flatnonzero(others == row)
        keep = np.ones(len(mine), bool)
        keep[own[0] if len(own) else len(mine) - 1] = False
        bias[position] = np.float32(scores[keep][:3].mean())
    return bias


def merge(out: Location, config: PipelineConfig, query_part: int) -> dict[str, int]:
    """Query partition ``q``'s blocks merged: each descriptor's 5 nearest over every partition vote (caps per
    image as the single task); VLAD and descriptor top-k; evaluation candidates and hits."""
    settings, found = config.dedup, read_plan(out)
    blocks = [_load(_at(out, "blocks", _block_name((query_part, d)))) for d in found.db_parts]

    def column(name: str) -> np.ndarray:
        return np.concatenate([b[name] for b in blocks])

    votes = {name: column(f"votes_{name}") for name in ("descriptor", "query", "other", "position", "distance", "part",
                                                        "set")}
    parts = _Parts()
    parts.add(votes["other"][votes["set"] < 0], votes["part"][votes["set"] < 0])
    parts.add(_ids(out, query_part), np.full(len(_ids(out, query_part)), query_part))
    result = Columns(first=np.int64, second=np.int64)
    evaluation = Columns(row=np.int64, ref=np.int64, set=np.int64)
    for number in range(-1, len(found.sets)):
        chosen = np.flatnonzero(votes["set"] == number)
        order = chosen[np.lexsort((votes["position"][chosen], votes["other"][chosen], votes["distance"][chosen],
                                   votes["descriptor"][chosen]))]
        top = _first_per(votes["descriptor"], order, NEIGHBOURS)
        first, second, _ = vote_pairs(votes["descriptor"][top], votes["query"][top], votes["other"][top],
                                      same_set=number < 0, max_candidates=settings.candidates,
                                      min_votes=settings.min_votes)
        if number < 0:
            result.add(first=first, second=second)
        else:
            evaluation.add(row=first, ref=second, set=number)
    vlad_links = Columns(row=np.int64, other=np.int64, score=np.float32)
    if _vlad_on(config, found.total):
        mirrored = column("vlad_mirrored")
        for flag in (False, True):
            chosen = mirrored == flag
            top = knn.merge_top_k([knn.Links(column("vlad_row")[chosen], column("vlad_other")[chosen],
                                             column("vlad_score")[chosen])], min(settings.k + 1, found.total))
            keep = (top.neighbor != top.query) & (top.similarity >= -1.0)
            vlad_links.add(row=top.query[keep], other=top.neighbor[keep], score=top.similarity[keep])
        parts.add(column("vlad_other"), column("vlad_part"))
    if checkpoint_rule(config):
        knn_set = column("knn_set")
        pool = knn_set < 0
        query_ids = _ids(out, query_part)
        links = knn.merge_top_k([knn.Links(column("knn_row")[pool], column("knn_other")[pool],
                                           column("knn_score")[pool])], max(min(settings.k + 1, found.total), 4))
        normalised = settings.score_norm and found.total >= 5
        bias = _bias(links, query_ids, found.total) if normalised else np.zeros(len(query_ids), np.float32)
        bias_of = dict(zip(query_ids.tolist(), bias.tolist()))
        top = knn.merge_top_k([links], min(settings.k + 1, found.total))
        score = top.similarity - np.array([bias_of[q] for q in top.query.tolist()], np.float32)
        keep = (top.neighbor != top.query) & (score >= settings.threshold)
        result.add(first=np.minimum(top.query, top.neighbor)[keep], second=np.maximum(top.query, top.neighbor)[keep])
        parts.add(column("knn_other")[pool], column("knn_part")[pool])
        for number, name in enumerate(found.sets):
            chosen = knn_set == number
            top = knn.merge_top_k([knn.Links(column("knn_row")[chosen], column("knn_other")[chosen],
                                             column("knn_score")[chosen])],
                                  min(settings.k, sum(found.evals[name].values())))
            score = top.similarity - np.array([bias_of[q] for q in top.query.tolist()], np.float32)
            keep = score >= settings.eval_threshold
            evaluation.add(row=top.query[keep], ref=top.neighbor[keep], set=number)
    pairs, vlad_arrays = result.arrays(), vlad_links.arrays()
    _save(_at(out, _part("merged", query_part)), first=pairs["first"], second=pairs["second"],
          first_part=parts(pairs["first"]), second_part=parts(pairs["second"]),
          **{f"vlad_{n}": v for n, v in vlad_arrays.items()}, vlad_part=parts(vlad_arrays["other"]),
          **{f"eval_{n}": v for n, v in evaluation.arrays().items()},
          hits_row=column("hits_row"), hits_set=column("hits_set"))
    return {"pairs": len(pairs["first"])}


class _Parts:
    """The partition of each pool id seen (ids and partitions gathered as found)."""

    def __init__(self) -> None:
        self.ids, self.parts = [], []

    def add(self, ids: np.ndarray, parts: np.ndarray) -> None:
        self.ids.append(np.asarray(ids, np.int64))
        self.parts.append(np.broadcast_to(np.asarray(parts, np.int64), np.shape(ids)))

    def __call__(self, wanted: np.ndarray) -> np.ndarray:
        known, where = np.unique(np.concatenate(self.ids), return_index=True) if self.ids else (np.zeros(0, np.int64),
                                                                                             np.zeros(0, np.int64))
        parts = np.concatenate(self.parts)[where] if self.ids else np.zeros(0, np.int64)
        return parts[np.searchsorted(known, wanted)] if len(wanted) else np.zeros(0, np.int64)


# -- degree, rank, collect: per partition ----------------------------------------------------------------------------


def degree(out: Location, config: PipelineConfig, partition: int) -> dict[str, int]:
    """Hash pairs per pool image of the partition (over every block touching it)."""
    found, mine = read_plan(out), _ids(out, partition)
    count = np.zeros(len(mine), np.int64)
    for other in found.pool_parts:
        unit = (min(other, partition), max(other, partition))
        pairs = _load(_at(out, "hashes", _block_name(unit)))
        for end in (pairs["first"], pairs["second"]):
            end = end[np.isin(end, mine)]
            count += np.bincount(np.searchsorted(mine, end), minlength=len(mine))
    output.publish(_at(out, _part("degree", partition, ".npy")), lambda stream: np.save(stream, count))
    return {"pairs": int(count.sum())}


def rank(out: Location, config: PipelineConfig, partition: int) -> dict[str, int]:
    """The VLAD pairs among the ``global_candidates`` best of an image of this partition (on its side of the pair),
    from the VLAD links of every query partition that touch it."""
    found, mine = read_plan(out), _ids(out, partition)
    rows, others, scores, parts = [], [], [], _Parts()
    for query in found.pool_parts:
        data = _load(_at(out, _part("merged", query)))
        touching = np.ones(len(data["vlad_row"]), bool) if query == partition else data["vlad_part"] == partition
        rows.append(data["vlad_row"][touching])
        others.append(data["vlad_other"][touching])
        scores.append(data["vlad_score"][touching])
        parts.add(data["vlad_row"][touching], query)
        parts.add(data["vlad_other"][touching], data["vlad_part"][touching])
    first, second, score = best_pairs(np.concatenate(rows), np.concatenate(others), np.concatenate(scores))
    kept = top_ranked(first, second, score, config.dedup.global_candidates, (np.isin(first, mine), np.isin(second, mine)))
    _save(_at(out, _part("ranked", partition)), first=first[kept], second=second[kept], first_part=parts(first[kept]),
          second_part=parts(second[kept]))
    return {"pairs": int(kept.sum())}


def collect(out: Location, config: PipelineConfig, partition: int) -> dict[str, int]:
    """Every candidate pair whose lower partition is this one, sorted by the other partition: vote, VLAD and
    descriptor candidates (``other``), hash pairs (``distance``, -1 for none)."""
    found = read_plan(out)
    firsts, seconds, highs = [], [], []
    for query in found.pool_parts:
        for source in ("merged", "ranked"):
            data = _load(_at(out, _part(source, query)))
            low = np.minimum(data["first_part"], data["second_part"])
            chosen = low == partition
            firsts.append(data["first"][chosen])
            seconds.append(data["second"][chosen])
            highs.append(np.maximum(data["first_part"], data["second_part"])[chosen])
    count = sum(len(f) for f in firsts)
    hashed = [_load(_at(out, "hashes", _block_name((partition, d)))) for d in found.pool_parts if d >= partition]
    first = np.concatenate(firsts + [h["first"] for h in hashed])
    second = np.concatenate(seconds + [h["second"] for h in hashed])
    high = np.concatenate(highs + [h["part"] for h in hashed])
    distance = np.concatenate([np.full(count, -1, np.int64)] + [h["distance"] for h in hashed])
    other = np.arange(len(first)) < count
    order = np.lexsort((-distance, second, first, high))  # per pair: its hash distance first
    first, second, high, distance, other = first[order], second[order], high[order], distance[order], other[order]
    start = np.r_[True, (first[1:] != first[:-1]) | (second[1:] != second[:-1])] if len(first) else np.zeros(0, bool)
    group = np.cumsum(start) - 1
    any_other = np.zeros(int(start.sum()), bool)
    np.logical_or.at(any_other, group, other)
    first, second, high, distance = first[start], second[start], high[start], distance[start]
    _save(_at(out, _part("pairs", partition)), first=first, second=second, high=high, distance=distance,
          other=any_other)
    counts = {int(h): int(n) for h, n in zip(*np.unique(high, return_counts=True))}
    output.write_bytes(_at(out, _part("pairs", partition, ".json")), json.dumps(counts).encode())  # last
    return {"pairs": len(first)}


# -- verify, leaks ----------------------------------------------------------------------------------------------


def verify_units(out: Location) -> list[tuple[int, int, int]]:
    units = []
    for low in read_plan(out).pool_parts:
        counts = json.loads(output.read_bytes(_at(out, _part("pairs", low, ".json"))))
        units += [(low, int(high), c) for high, n in sorted(counts.items(), key=lambda i: int(i[0]))
                  for c in range(math.ceil(n / VERIFY_BLOCK))]
    return units


def verify(out: Location, config: PipelineConfig, unit: tuple[int, int, int]) -> dict[str, int]:
    """Chunk ``c`` of the candidate pairs between partitions ``a <= b``, verified (:func:`.pipeline.verify_block`);
    a hash pair counts when neither image's code is frequent (``burst_images`` hash neighbours)."""
    low, high, chunk = unit
    data = _load(_at(out, _part("pairs", low)))
    chosen = np.flatnonzero(data["high"] == high)[chunk * VERIFY_BLOCK:(chunk + 1) * VERIFY_BLOCK]
    first, second, distance, other = (data[n][chosen] for n in ("first", "second", "distance", "other"))
    local: dict[int, LocalFeatures] = {}
    degrees = []
    for part in sorted({low, high}):
        mine = _ids(out, part)
        local |= dict(zip(mine.tolist(), _content(out, config, part)))
        degrees.append((mine, np.load(output.readable(_at(out, _part("degree", part, ".npy"))), allow_pickle=False)))

    def degree_of(rows: np.ndarray) -> np.ndarray:
        found = np.zeros(len(rows), np.int64)
        for mine, count in degrees:
            inside = np.isin(rows, mine)
            found[inside] = count[np.searchsorted(mine, rows[inside])]
        return found

    usable = distance >= 0
    if config.dedup.burst_images > 0:
        usable &= np.maximum(degree_of(first), degree_of(second)) < config.dedup.burst_images
    hashed = {(a, b): 1.0 - d / 64 for a, b, d in zip(first[usable].tolist(), second[usable].tolist(),
                                                      distance[usable].tolist())}
    todo = other | usable
    pairs = np.stack([first[todo], second[todo]], axis=1).reshape(-1, 2)
    found = verify_block(pairs, local, hashed, config.dedup)
    _save(_at(out, "verified", f"a{low:05d}-b{high:05d}-c{chunk:05d}.npz"),
          first=np.array([f[0] for f in found], np.int64), second=np.array([f[1] for f in found], np.int64),
          kind=np.array([KIND[f[2]] for f in found], np.int64), score=np.array([f[3] for f in found], np.float64))
    return {"verified": len(pairs), "links": len(found)}


def leaks(out: Location, config: PipelineConfig, query_part: int) -> dict[str, int]:
    """Pool rows of the partition linked to an evaluation set: sha256 or hash hits, and vote / descriptor
    candidates verified at the looser threshold (against one evaluation partition at a time)."""
    found = read_plan(out)
    data = _load(_at(out, _part("merged", query_part)))
    mine = _ids(out, query_part)
    local = dict(zip(mine.tolist(), _content(out, config, query_part)))
    verify = verify_config(config.dedup, evaluation=True)
    rows, sets = [], []
    for number, name in enumerate(found.sets):
        linked = set(data["hits_row"][data["hits_set"] == number].tolist())
        chosen = data["eval_set"] == number
        pairs = sorted(set(zip(data["eval_row"][chosen].tolist(), data["eval_ref"][chosen].tolist())))
        if pairs:
            where = found.ref_partition(name, np.array([b for _, b in pairs], np.int64))
            for part in np.unique(where).tolist():
                references = _features(out, config, part)[1].get(name, [])
                offset = found.ref_offset(name, part)
                for (a, b), at in zip(pairs, where.tolist()):
                    if at == part and a not in linked and verify_pair(references[b - offset].local, local[a],
                                                                      verify).accepted:
                        linked.add(a)
        rows += sorted(linked)
        sets += [number] * len(linked)
    _save(_at(out, _part("leaks", query_part)), row=np.array(rows, np.int64), set=np.array(sets, np.int64))
    return {"linked": len(rows)}


# -- exact, components, write ---------------------------------------------------------------------------------------


def exact_units(out: Location) -> list[int]:
    return list(range(min(256, max(1, math.ceil(read_plan(out).total / EXACT_BUCKET)))))


def exact(out: Location, config: PipelineConfig, bucket: int) -> dict[str, int]:
    """Links from every pool row to the smallest id of the same sha256, for the digests of one bucket (first byte)."""
    found = read_plan(out)
    buckets = len(exact_units(out))
    digests, numbers = [], []
    for part in found.pool_parts:
        sha = _read_table(_at(out, _part("rows", part, ".parquet")), ["sha256"])["sha256"].to_pylist()
        mine = _ids(out, part)
        chosen = [i for i, d in enumerate(sha) if d is not None and (buckets == 1 or int(d[:2], 16) % buckets == bucket)]
        digests += [sha[i] for i in chosen]
        numbers.append(mine[chosen])
    number = np.concatenate(numbers) if numbers else np.zeros(0, np.int64)
    order = sorted(range(len(digests)), key=lambda i: (digests[i], number[i]))
    first, second, head, head_digest = [], [], -1, None
    for i in order:
        if digests[i] != head_digest:
            head, head_digest = int(number[i]), digests[i]
        else:
            first.append(head)
            second.append(int(number[i]))
    _save(_at(out, _part("exact", bucket)), first=np.array(first, np.int64), second=np.array(second, np.int64))
    return {"links": len(first)}


def components(out: Location, config: PipelineConfig) -> dict[str, int]:
    """Structural filter, union-find, keep rule (most pixels, then key), strongest link per row, leaks; per
    partition the ``groups`` file (group id, kept, reason code, similarity) and the winners' keys."""
    found = read_plan(out)
    total = found.total
    pixels = np.zeros(total, np.int64)
    for part in found.pool_parts:
        pixels[_ids(out, part)] = _read_table(_at(out, _part("rows", part, ".parquet")), ["pixels"])["pixels"].to_numpy()
    exact_links = [_load(_at(out, _part("exact", b))) for b in exact_units(out)]
    exact_first = np.concatenate([e["first"] for e in exact_links])
    exact_second = np.concatenate([e["second"] for e in exact_links])
    head = np.arange(total, dtype=np.int64)
    head[exact_second] = exact_first
    verified = [_load(_at(out, "verified", name)) for name in output.names(_at(out, "verified"), "*.npz")]
    first = np.concatenate([exact_first] + [v["first"] for v in verified])
    second = np.concatenate([exact_second] + [v["second"] for v in verified])
    kind = np.concatenate([np.zeros(len(exact_first), np.int64)] + [v["kind"] for v in verified])
    score = np.concatenate([np.ones(len(exact_first))] + [v["score"] for v in verified])
    order = np.lexsort((kind, second, first))  # an exact link wins over a verification of the same pair
    first, second, kind, score = first[order], second[order], kind[order], score[order]
    unique = np.r_[True, (first[1:] != first[:-1]) | (second[1:] != second[:-1])] if len(first) else np.zeros(0, bool)
    first, second, kind, score = first[unique], second[unique], kind[unique], score[unique]
    keep = (kind == 0) | structural_links(first, second, total, config.dedup.min_structural)
    first, second, kind, score = first[keep], second[keep], kind[keep], score[keep]
    parent = cc.forest(total)
    cc.join(parent, first, second)
    labels = cc.labels(parent)
    ids = np.arange(total, dtype=np.int64)
    winners = cc.best_per_component(labels, ids, -pixels)  # ids follow key order: ties go to the smaller key
    kept_of = np.zeros(total, np.int64)
    kept_of[labels[winners]] = winners
    group = kept_of[labels]
    is_kept = group == ids
    ends = np.concatenate([first, second])
    order = np.lexsort((-np.concatenate([score, score]), np.concatenate([kind, kind]), ends))
    best = order[np.r_[True, ends[order][1:] != ends[order][:-1]]] if len(ends) else np.zeros(0, np.int64)
    best_kind = np.full(total, KIND["copy"], np.int64)
    best_score = np.zeros(total, np.float64)
    best_kind[ends[best]] = np.concatenate([kind, kind])[best]
    best_score[ends[best]] = np.concatenate([score, score])[best]
    same_digest = head[ids] == head[group]
    reason = np.where(is_kept, 0, np.where(same_digest, 1, np.where(best_kind == 0, 2, best_kind + 1)))
    similarity = np.where(is_kept | same_digest, 1.0, best_score).astype(np.float32)
    kept = is_kept.copy()
    linked = [_load(_at(out, _part("leaks", q))) for q in found.pool_parts]
    for number in range(len(found.sets)):
        rows = np.unique(np.concatenate([item["row"][item["set"] == number] for item in linked]))
        if not len(rows):
            continue
        leaking = np.isin(labels, np.unique(labels[rows]))
        reason[leaking & (reason < len(REASONS))] = len(REASONS) + number
        kept[leaking] = False
    chosen, keys = np.unique(group[~is_kept]), []
    for part in found.pool_parts:
        mine = _ids(out, part)
        _save(_at(out, _part("groups", part)), group=group[mine], kept=kept[mine], reason=reason[mine],
              similarity=similarity[mine])
        where = np.flatnonzero(np.isin(mine, chosen))
        part_keys = _read_table(_at(out, _part("rows", part, ".parquet")), ["key"])["key"]
        keys += list(zip(mine[where].tolist(), part_keys.take(pa.array(where)).to_pylist()))
    keys.sort()
    _write_table(_at(out, "winners.parquet"), pa.table({"id": pa.array([i for i, _ in keys], pa.int64()),
                                                        "key": pa.array([k for _, k in keys], pa.string())}))
    return {"groups": len(winners), "kept": int(kept.sum())}


def write(out: Location, config: PipelineConfig, partition: int) -> dict[str, int]:
    """The partition's ``duplicates`` part (empty for a partition without pool images)."""
    found = read_plan(out)
    if not found.pool.get(partition):
        table = DUPLICATES.schema.empty_table()
    else:
        rows = _read_table(_at(out, _part("rows", partition, ".parquet")), ["key", "uri"])
        groups = _load(_at(out, _part("groups", partition)))
        mine = _ids(out, partition)
        group, codes = groups["group"], groups["reason"]
        kept_key = rows["key"].to_pylist()
        others = np.flatnonzero(group != mine)
        if len(others):
            winners = _read_table(_at(out, "winners.parquet"))
            where = np.searchsorted(winners["id"].to_numpy(), group[others])
            for row, key in zip(others.tolist(), winners["key"].take(pa.array(where)).to_pylist()):
                kept_key[row] = key
        reason = [REASONS[c] if c < len(REASONS) else f"leak:{found.sets[c - len(REASONS)]}" for c in codes.tolist()]
        table = pa.table({"key": rows["key"], "uri": rows["uri"], "group": group, "kept": groups["kept"],
                          "reason": reason, "kept_key": pa.array(kept_key, pa.string()),
                          "similarity": groups["similarity"]}, schema=DUPLICATES.schema)
    tables.write_part(out, "duplicates", partition, table)
    return {"in": len(table), "out": int(pc.sum(table["kept"]).as_py() or 0)}


def clean(out: Location) -> None:
    """Remove every work file; ``plan.json`` last (see :func:`finished`)."""
    for pattern in WORK_FILES:  # plan.json is the last pattern
        output.remove_matching(out, pattern)
    folder = _at(out)
    output.remove_empty_folders(folder)  # the work folder, then work/ when nothing else is in it


def finished(out: Location) -> bool:
    """Whether no run of the steps was left unfinished (no ``plan.json`` behind)."""
    return not output.is_file(_at(out, "plan.json"))


# -- the declaration ------------------------------------------------------------------------------------------------

STEP_FILES = {
    "prepare": "rows/part-{unit:05d}.parquet", "plan": "plan.json", "ids": "ids/part-{unit:05d}.npy",
    "templates": "templates.npz", "flags": "flags/part-{unit:05d}.npz", "vocabulary": "vlad.npz",
    "vlad": "vlad/part-{unit:05d}.npz", "describe": "descriptors/part-{unit:05d}.npz", "whiten": "whitening.npz",
    "block": "blocks/q{unit[0]:05d}-d{unit[1]:05d}.npz", "merge": "merged/part-{unit:05d}.npz",
    "degree": "degree/part-{unit:05d}.npy", "rank": "ranked/part-{unit:05d}.npz", "collect": "pairs/part-{unit:05d}.json",
    "verify": "verified/a{unit[0]:05d}-b{unit[1]:05d}-c{unit[2]:05d}.npz", "leaks": "leaks/part-{unit:05d}.npz",
    "exact": "exact/part-{unit:05d}.npz", "components": "winners.parquet",
}
"""The file whose existence says a unit of a step is done (each step writes it last)."""


def done_units(step: str, out: Location, units: list) -> list:
    template = STEP_FILES[step]
    folder, _, _ = template.rpartition("/")
    present = set(output.names(_at(out, *folder.split("/")) if folder else _at(out)))
    return [unit for unit in units if template.format(unit=unit).rpartition("/")[2] in present]


def _pool_parts(out: Location) -> list[int]:
    return read_plan(out).pool_parts


def _db_parts(out: Location) -> list[int]:
    return read_plan(out).db_parts


STEPS: tuple[tuple[str, Callable, Callable[[Location, PipelineConfig], Iterable] | None], ...] = (
    ("prepare", prepare, lambda out, config: image_partitions(out)),
    ("plan", plan, None),
    ("ids", ids, lambda out, config: _pool_parts(out)),
    ("templates", templates, None),
    ("flags", flags, lambda out, config: _pool_parts(out)),
    ("vocabulary", vocabulary, None),
    ("vlad", vlad, lambda out, config: _pool_parts(out) if _vlad_on(config, read_plan(out).total) else []),
    ("describe", describe, lambda out, config: _db_parts(out) if checkpoint_rule(config) else []),
    ("whiten", whiten, lambda out, config: [None] if checkpoint_rule(config) else []),
    ("block", block, lambda out, config: block_units(out)),
    ("merge", merge, lambda out, config: _pool_parts(out)),
    ("degree", degree, lambda out, config: _pool_parts(out)),
    ("rank", rank, lambda out, config: _pool_parts(out)),
    ("collect", collect, lambda out, config: _pool_parts(out)),
    ("verify", verify, lambda out, config: verify_units(out)),
    ("leaks", leaks, lambda out, config: _pool_parts(out)),
    ("exact", exact, lambda out, config: exact_units(out)),
    ("components", components, None),
    ("write", write, lambda out, config: image_partitions(out)),
    ("clean", lambda out, config: clean(out) or {}, None),
)
"""``(name, function(out, config[, unit]), units(out, config) or None for one unit)`` in order."""


def declared(active: Callable[[Location, PipelineConfig], bool],
             on_write: Callable[[Location, int], None]) -> tuple[Step, ...]:
    """:data:`STEPS` as the stage's steps, with units only when ``active`` (the copy rule applies); each
    ``duplicates`` part is handed to ``on_write`` (the stage records it)."""
    found = []
    for name, function, units in STEPS:
        run = _Run(name, function, on_write if name == "write" else None)
        found.append(Step(f"copy-{name}", run, _Units(active, units), _Done(name) if name in STEP_FILES else None,
                          shared=descriptor_model if name == "describe" else None))
    return tuple(found)


class _Run:
    """A step's function as the dispatcher calls it: ``run(out, config, unit, previous[, shared=])``."""

    def __init__(self, name: str, function: Callable, on_write: Callable[[Location, int], None] | None) -> None:
        self.name, self.function, self.on_write = name, function, on_write

    def __call__(self, out: Location, config: PipelineConfig, unit, previous: list, shared=None) -> dict:
        arguments = () if unit is None else (unit,)
        found = self.function(out, config, *arguments, *(() if shared is None else (shared,)))
        if self.on_write is not None:
            self.on_write(out, unit)
        return found


class _Units:
    def __init__(self, active: Callable, units: Callable | None) -> None:
        self.active, self.units = active, units

    def __call__(self, out: Location, config: PipelineConfig, previous: list) -> list:
        if not self.active(out, config):
            return []
        return [None] if self.units is None else list(self.units(out, config))


class _Done:
    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, out: Location, config: PipelineConfig, units: list) -> dict:
        return {unit: {} for unit in done_units(self.name, out, units)}


def run_all(out: Location, config: PipelineConfig, on_write: Callable[[Location, int], None] | None = None
            ) -> dict[str, int]:
    """Every step in order, one unit after another, in this process (the plain loop a scheduler spreads out)."""
    counts = []
    for step in declared(lambda out, config: True, on_write or (lambda out, unit: None)):
        shared = step.shared(config) if step.shared is not None and step.units(out, config, []) else None
        for unit in step.units(out, config, []):
            found = step.run(out, config, unit, [], **({} if shared is None else {"shared": shared}))
            if step.name == "copy-write":
                counts.append(found)
    return {"in": sum(c["in"] for c in counts), "out": sum(c["out"] for c in counts)}
