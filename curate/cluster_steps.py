"""The cluster stage as steps over partitions: distributed hierarchical k-means with resampling (Vo et al. 2024).

Level 1 (the only level as large as the pool) runs as map/reduce rounds of :mod:`curate.lloyd`; the upper
levels cluster the level-1 centroids in one small task with :func:`curate.kmeans.resampled_kmeans`, as the
single-task :func:`curate.kmeans.hierarchical_kmeans` does. Steps, in order (``P`` = per partition, ``1`` =
one task); every step reads and writes files under ``OUT/work/cluster/`` only, so its arguments and results
stay small:

==============  ====  =========================================================================================
``prepare``      P    the partition's kept pool as unit vectors (``pool/part-NNNNN.npy``), their draw scores,
                      and its ``k`` lowest-scoring vectors (``seed/part-NNNNN.npz``)
``seed``         1    pool size, ``ks``, the first centroids (``centroids/round-0000.npy``), the cluster buckets
then, once per round ``R`` (a ``Repeat`` of five steps, ``R`` carried in their results):
``resample``     P    when a resampling step starts at ``R``: each vector's (label, similarity) to the centroids,
                      in row order and sorted by label with the offsets of each bucket of cluster ids
``radius``       B    then, per bucket, each cluster's ``r``-th largest similarity (its slice of every partition's
                      sorted pairs, one partition at a time): the sample is every vector at least as close
``radii``        1    the buckets' radii joined into one ``[k]`` array (``resample/radius-S.npy``)
``assign``       G    sums and counts by nearest centroid (``sums/round-RRRR-part-NNNNN.npz``), one task per
                      run of consecutive partitions (runs of equal size, about :data:`GROUP_BYTES` of vectors)
``update``       1    the centroids of round ``R + 1`` from the summed parts (``centroids/round-R+1.npy``)
and last:
``upper``        1    levels 2 and up, from the level-1 centroids (``tree.npz``)
``write``        P    the ``clusters`` part of the partition
``clean``        1    the work folder goes
==============  ====  =========================================================================================

Rounds: ``niter`` on the whole pool, then ``niter`` on the sample of each of the ``resampling_steps``
steps (a round that moves no centroid ends its step early: the rounds left would repeat it); like faiss,
a round trains on at most ``MAX_POINTS_PER_CENTROID`` (256) vectors a centroid, a subsample drawn by key
score, so level 1 costs ``2 min(n, 256 k) k d`` flops a round (exact assignment;
with the inverted file above ``cluster.exact_max_k``, about ``2 * 17 sqrt(k) d`` a vector). Memory per
task: one partition's vectors plus ``[k, d]`` centroids (a ``[k, d]`` int64 sum in the reduce); ``radius``
holds the (int32, float32) pairs of one bucket, at most ``2 r`` a cluster of it (each cluster's ``r`` most
similar are all it needs) plus one partition's slice. The ``B`` buckets are contiguous ranges of
``ceil(k / P)`` cluster ids (``P`` partitions), about one partition's pairs each. Centroids do not depend
on how the pool is partitioned (seeds are per key, sums are exact), so neither do the radii or the table.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import faiss
import numpy as np
import pyarrow as pa

from dinolab.curate import manifest, output, tables
from dinolab.curate.kmeans import MAX_POINTS_PER_CENTROID, default_ks, resampled_kmeans
from dinolab.curate.lloyd import (Assigner, Lowest, Sums, cluster_sums, ivf_over, key_scores, lowest, merge_lowest,
                          most_similar, sample_thresholds, unit, update)
from dinolab.curate.output import Location
from dinolab.curate.partitions import kept_pool, load_array, load_arrays, save_array, save_arrays, work
from dinolab.curate.steps import Repeat, Step
from dinolab.schemas.config import PipelineConfig
from dinolab.schemas.tables import CLUSTERS

STAGE = "cluster"
WORK_FILES = tuple(f"work/cluster/{folder}*" for folder in ("", "pool/", "seed/", "centroids/", "sums/", "resample/"))
"""Everything the steps write besides the ``clusters`` parts (removed by the last step, or with the stage)."""
PAIR = np.dtype([("label", "<i4"), ("similarity", "<f4")])
"""A vector's nearest centroid and its similarity to it, as the ``resample`` step's sorted pairs file holds them."""
OFFSET = np.dtype("<i8")


GROUP_BYTES = 1 << 26
"""An ``assign`` task takes a run of consecutive partitions holding about this many bytes of unit vectors (runs of
equal size, :func:`partition_groups`): a round of many small partitions would otherwise cost a task (and a file
for the reduce to read) each."""


def _dir(out: Location) -> Location:
    return work(out, STAGE)


def _part(name: str, partition: int, suffix: str = ".npz") -> str:
    return f"{name}/part-{partition:05d}{suffix}"


def _resampled_part(step: int, partition: int, suffix: str = ".npz") -> str:
    """``.npz``: the partition's pairs in row order; ``.pairs``: sorted by label (raw :data:`PAIR` records);
    ``.buckets``: the offset of each bucket's first sorted pair, and their count last (raw ``int64``)."""
    return f"resample/step-{step}-part-{partition:05d}{suffix}"


def _bucket_radius(step: int, bucket: int) -> str:
    return f"resample/radius-{step}-bucket-{bucket:05d}.npy"


def bucket_bounds(k: int, partitions: int) -> np.ndarray:
    """The first cluster id of each bucket, then ``k``: contiguous ranges of ``ceil(k / partitions)`` ids, so a
    bucket holds about one partition's pairs (one empty bucket when ``k`` is 0)."""
    width = max(1, -(-k // max(1, partitions)))
    return np.append(np.arange(0, max(k, 1), width), k).astype(np.int64)


def _at(out: Location, name: str) -> Location:
    folder = _dir(out)
    for piece in name.split("/"):
        folder = folder / piece
    return folder


def rounds(config: PipelineConfig) -> int:
    """Lloyd rounds of level 1: ``niter`` for the k-means and for each resampling step."""
    return config.cluster.niter * (1 + config.cluster.resampling_steps)


def _pool_vectors(out: Location, partition: int) -> np.ndarray:
    path = _at(out, _part("pool", partition, ".npy"))
    return np.load(path, mmap_mode="r") if not isinstance(path, output.RemotePath) else load_array(path)


def _info(out: Location) -> dict:
    return {name: value for name, value in load_arrays(_at(out, "seed.npz")).items()}


def _save_centroids(out: Location, config: PipelineConfig, round_: int, centroids: np.ndarray) -> None:
    """Round ``round_``'s centroids and, above ``cluster.exact_max_k``, the inverted file over them (built once
    here rather than in every partition's task)."""
    if len(centroids) > config.cluster.exact_max_k:
        save_array(_at(out, f"centroids/round-{round_:04d}.ivf.npy"), faiss.serialize_index(ivf_over(centroids)))
    save_array(_at(out, f"centroids/round-{round_:04d}.npy"), centroids)


def _assigner(out: Location, config: PipelineConfig, round_: int) -> Assigner:
    centroids = load_array(_at(out, f"centroids/round-{round_:04d}.npy"))
    ivf = None
    if len(centroids) > config.cluster.exact_max_k:
        ivf = faiss.deserialize_index(load_array(_at(out, f"centroids/round-{round_:04d}.ivf.npy")))
    return Assigner(centroids, config.cluster.exact_max_k, ivf=ivf)


# -- steps -------------------------------------------------------------------------------------------------


def prepare(out: Location, config: PipelineConfig, partition: int, previous=None) -> dict:
    """Partition ``partition``'s kept pool as unit vectors, and its lowest seed scores (as many as level 1 can use)."""
    pool = kept_pool(out, partition)
    vectors = unit(pool.vectors)
    save_array(_at(out, _part("pool", partition, ".npy")), vectors)
    scores = key_scores(pool.keys, config.cluster.seed)
    save_array(_at(out, _part("pool", partition, ".scores.npy")), scores)
    ks = config.cluster.ks
    most = ks[0] if ks else len(pool.keys)  # default_ks never asks for more clusters than images
    seeds = lowest(scores, vectors, most)
    save_arrays(_at(out, _part("seed", partition)), scores=seeds.scores, vectors=seeds.vectors,
                rows=np.array(len(pool.keys)))
    return {"in": len(pool.keys)}


def _rows_of(path: Location) -> int:
    """The pool rows a ``seed/part-NNNNN.npz`` stands for (its ``rows`` array alone is read)."""
    with np.load(output.readable(path)) as data:
        return int(data["rows"])


def seed(out: Location, config: PipelineConfig, unit_=None, previous=None) -> dict:
    """Pool size, cluster counts and the first level-1 centroids: the ``k`` lowest-scoring vectors of the pool."""
    paths = [_dir(out) / "seed" / name for name in output.names(_dir(out) / "seed", "part-*.npz")]
    rows = [_rows_of(path) for path in paths]
    size = sum(rows)
    ks = list(config.cluster.ks) or default_ks(size, config.cluster.levels)
    k = min(ks[0], size)
    # one partition's candidates in memory at a time (with ks unset, a partition's file holds all its vectors)
    seeded = (Lowest(part["scores"], part["vectors"]) for part in map(load_arrays, paths) if len(part["scores"]))
    centroids = merge_lowest(seeded, k).vectors if size else np.zeros((0, 1), dtype=np.float32)
    _save_centroids(out, config, 0, centroids)
    # Lloyd rounds use at most MAX_POINTS_PER_CENTROID points a centroid, drawn by key score (faiss subsamples too)
    fraction = min(1.0, MAX_POINTS_PER_CENTROID * k / size) if size else 1.0
    limit = np.uint64(np.iinfo(np.uint64).max) if fraction >= 1 else np.uint64(int(fraction * 2.0**64))
    dim = centroids.shape[1] if len(centroids) else 0
    save_arrays(_at(out, "seed.npz"), size=np.array(size), ks=np.array(ks, dtype=np.int64), limit=np.array(limit),
                bounds=bucket_bounds(k, len(paths)), parts=np.array([tables.part_number(path.name) for path in paths]),
                part_bytes=np.array(rows, np.int64) * dim * 4)
    return {"in": size, "k": k, "round": 0}


def _keep(out: Location, config: PipelineConfig, round_: int, partition: int) -> np.ndarray | None:
    """Rows of the partition that round ``round_`` trains on: those of the training subsample (all of them up to
    ``MAX_POINTS_PER_CENTROID * k`` pool images) in the current resampling sample (``None``: every row)."""
    limit = load_arrays(_at(out, "seed.npz"))["limit"]
    keep = None
    if limit != np.iinfo(np.uint64).max:
        keep = load_array(_at(out, _part("pool", partition, ".scores.npy"))) <= limit
    step = round_ // config.cluster.niter
    if step == 0:
        return keep
    state = load_arrays(_at(out, _resampled_part(step, partition)))
    radius = load_array(_at(out, f"resample/radius-{step}.npy"))
    sample = state["similarity"] >= radius[state["label"]]
    return sample if keep is None else sample & keep


def partition_groups(partitions: Sequence[int], sizes: Sequence[int], budget: int) -> list[tuple[int, ...]]:
    """``ceil(sum(sizes) / budget)`` runs of consecutive ``partitions`` of about equal total size (so the tasks of a
    round are even), each about ``budget`` or less; every partition alone when ``budget`` is 0."""
    sizes = np.asarray(sizes, dtype=np.float64)
    total = float(sizes.sum())
    if budget <= 0 or total <= 0:
        return [(int(partition),) for partition in partitions]
    count = min(len(sizes), math.ceil(total / budget))
    middles = np.cumsum(sizes) - sizes / 2  # each partition joins the run its middle falls in
    runs = np.minimum((middles * count / total).astype(np.int64), count - 1)
    return [tuple(int(p) for p in np.asarray(partitions)[runs == run]) for run in np.unique(runs)]


def assign(out: Location, config: PipelineConfig, unit_: tuple[int, tuple[int, ...]], previous=None) -> dict:
    """Round ``R`` on a group of partitions (``unit_ = (R, (p, ...))``): per-cluster sums and counts of their
    (sampled) vectors."""
    round_, partitions = unit_
    assigner = _assigner(out, config, round_)
    centroids = assigner.centroids
    points = []
    for partition in partitions:
        vectors = _pool_vectors(out, partition)
        keep = _keep(out, config, round_, partition) if len(vectors) else None
        points.append(np.asarray(vectors if keep is None else vectors[keep], dtype=np.float32))
    points = np.concatenate(points).reshape(-1, centroids.shape[1])
    sims, labels = assigner(points) if len(points) else (np.zeros(0, np.float32), np.zeros(0, np.int64))
    sums = cluster_sums(points, labels, sims, len(centroids))
    present = np.flatnonzero(sums.counts)  # only the clusters the group touches: bounded by its rows
    save_arrays(_at(out, f"sums/round-{round_:04d}-part-{partitions[0]:05d}.npz"), clusters=present,
                sums=sums.sums[present], counts=sums.counts[present], similarity=np.array(sums.similarity))
    return {"round": round_, "in": len(points)}


def update_centroids(out: Location, config: PipelineConfig, round_: int, previous=None) -> dict:
    """Round ``R``'s reduce: add every partition's sums (exactly; any order) and normalise the means. When no
    centroid moved, every later round of the resampling step would repeat this one (same centroids, same sample,
    same sums), so they are skipped: the centroids are saved as those of the next step's first round."""
    centroids = load_array(_at(out, f"centroids/round-{round_:04d}.npy"))
    folder = _at(out, "sums")
    total = Sums(np.zeros(centroids.shape, dtype=np.int64), np.zeros(len(centroids), dtype=np.int64), 0.0)
    for name in output.names(folder, f"round-{round_:04d}-part-*.npz"):
        part = load_arrays(folder / name)
        total.sums[part["clusters"]] += part["sums"]
        total.counts[part["clusters"]] += part["counts"]
        total = Sums(total.sums, total.counts, total.similarity + float(part["similarity"]))
    updated = update(total, centroids)
    following = _step_end(config, round_) if settled(updated, centroids) else round_ + 1
    _save_centroids(out, config, following, updated)
    output.remove_matching(_dir(out), f"sums/round-{round_:04d}-part-*.npz")  # a rerun of the round redoes them
    return {**_reduced(config, following), "in": int(total.counts.sum()), "similarity": total.similarity}


def settled(updated: np.ndarray, centroids: np.ndarray) -> bool:
    """No centroid moved (bit for bit): the round's assignments were those of the round before."""
    return np.array_equal(updated, centroids)


def _step_end(config: PipelineConfig, round_: int) -> int:
    """The first round after the resampling step that round ``round_`` belongs to."""
    return (round_ // config.cluster.niter + 1) * config.cluster.niter


def _reduced(config: PipelineConfig, following: int) -> dict:
    """The result of a reduced round: the round that follows it, and how many are left (0 ends the rounds)."""
    return {"round": following, "rounds_left": rounds(config) - following}


def _following(out: Location, config: PipelineConfig, round_: int) -> int | None:
    """The round that follows round ``round_`` once it is reduced (its centroids exist): ``R + 1``, or the next
    resampling step's first round when ``R`` moved no centroid; ``None`` while ``R`` is not reduced."""
    for following in (round_ + 1, _step_end(config, round_)):
        if _exists(out, f"centroids/round-{following:04d}.npy"):
            return following
    return None


def _resampling_step(config: PipelineConfig, round_: int) -> int:
    """The resampling step that starts at round ``round_`` (0: none starts there)."""
    niter = config.cluster.niter
    return round_ // niter if round_ and round_ % niter == 0 else 0


def resample(out: Location, config: PipelineConfig, unit_: tuple[int, int | None], previous=None) -> dict:
    """Before the rounds of a resampling step (``unit_ = (R, p)``, ``R`` its first round): each vector's nearest
    centroid and similarity to it. ``(R, None)``: no step starts at round ``R``, nothing to do."""
    round_, partition = unit_
    step = _resampling_step(config, round_)
    if partition is None or not step:
        return {"round": round_}
    vectors = np.asarray(_pool_vectors(out, partition), dtype=np.float32)
    if len(vectors):
        sims, labels = _assigner(out, config, round_)(vectors)
    else:
        sims, labels = np.zeros(0, np.float32), np.zeros(0, np.int64)
    save_pairs(out, step, partition, labels.astype(np.int32), sims)
    return {"round": round_, "in": len(vectors)}


def save_pairs(out: Location, step: int, partition: int, labels: np.ndarray, sims: np.ndarray) -> None:
    """Partition ``partition``'s (label, similarity) pairs of resampling step ``step``: sorted by label with the
    offsets of the buckets (what ``radius`` reads a slice of), and last, in row order (what ``assign`` reads)."""
    order = np.argsort(labels, kind="stable")
    pairs = np.empty(len(labels), PAIR)
    pairs["label"], pairs["similarity"] = labels[order], sims[order]
    output.write_bytes(_at(out, _resampled_part(step, partition, ".pairs")), pairs.tobytes())
    offsets = np.searchsorted(pairs["label"], load_arrays(_at(out, "seed.npz"))["bounds"]).astype(OFFSET)
    output.write_bytes(_at(out, _resampled_part(step, partition, ".buckets")), offsets.tobytes())
    save_arrays(_at(out, _resampled_part(step, partition)), label=labels, similarity=sims)


def _records(path: Location, dtype: np.dtype, first: int, last: int) -> np.ndarray:
    """Records ``[first, last)`` of a raw file of ``dtype`` records (one ranged read)."""
    return np.frombuffer(output.read_bytes(path, first * dtype.itemsize, last * dtype.itemsize), dtype)


def _bucket_slices(out: Location, step: int, bucket: int) -> Iterator[np.ndarray]:
    """Bucket ``bucket``'s pairs in each partition's sorted file, one partition at a time."""
    folder = _at(out, "resample")
    for name in output.names(folder, f"step-{step}-part-*.buckets"):
        first, last = (int(offset) for offset in _records(folder / name, OFFSET, bucket, bucket + 2))
        if last > first:
            yield _records(folder / name.replace(".buckets", ".pairs"), PAIR, first, last)


def radius(out: Location, config: PipelineConfig, unit_: tuple[int, int | None], previous=None) -> dict:
    """A resampling step's sample, for the clusters of bucket ``b`` (``unit_ = (R, b)``): each one's ``r``-th
    largest similarity (``r`` = mean cluster size). Pairs beyond a cluster's ``r`` most similar are dropped
    whenever the bucket holds more than ``2 r`` a cluster, so a bucket of large clusters stays bounded."""
    round_, bucket = unit_
    step = _resampling_step(config, round_)
    if bucket is None or not step:
        return {"round": round_}
    info = load_arrays(_at(out, "seed.npz"))
    first, last = (int(bound) for bound in info["bounds"][bucket:bucket + 2])
    per_cluster = max(1, int(info["size"]) // max(1, int(info["bounds"][-1])))
    held, size, count = [np.zeros(0, PAIR)], 0, 0
    for pairs in _bucket_slices(out, step, bucket):
        held.append(pairs)
        size, count = size + len(pairs), count + len(pairs)
        if size > 2 * per_cluster * (last - first):
            pairs = np.concatenate(held)
            held = [pairs[most_similar(pairs["label"], pairs["similarity"], per_cluster)]]
            size = len(held[0])
    pairs = np.concatenate(held)
    thresholds = sample_thresholds(pairs["label"].astype(np.int64) - first, pairs["similarity"], last - first,
                                   per_cluster)
    save_array(_at(out, _bucket_radius(step, bucket)), thresholds)
    return {"round": round_, "in": count}


def radii(out: Location, config: PipelineConfig, round_: int, previous=None) -> dict:
    """The buckets' radii as one ``[k]`` array (``resample/radius-S.npy``, what ``assign`` reads); the sorted
    pairs are no longer needed."""
    step = _resampling_step(config, round_)
    if not step:
        return {"round": round_}
    buckets = len(load_arrays(_at(out, "seed.npz"))["bounds"]) - 1
    joined = np.concatenate([load_array(_at(out, _bucket_radius(step, bucket))) for bucket in range(buckets)])
    save_array(_at(out, f"resample/radius-{step}.npy"), joined)
    for pattern in ("step-{}-part-*.pairs", "step-{}-part-*.buckets", "radius-{}-bucket-*.npy"):
        output.remove_matching(_dir(out), "resample/" + pattern.format(step))
    return {"round": round_, "in": len(joined)}


def upper(out: Location, config: PipelineConfig, unit_=None, previous=None) -> dict:
    """Levels 2 and up: k-means of each level's centroids, one small task (as the single-task version)."""
    info = _info(out)
    ks = [int(k) for k in info["ks"]]
    points = load_array(_at(out, f"centroids/round-{rounds(config):04d}.npy"))
    parents = {}
    cfg = config.cluster
    for level, k in enumerate(ks[1:], start=1):
        if not len(points):
            parents[f"level{level + 1}"] = np.zeros(0, np.int64)
            continue
        centroids, labels = resampled_kmeans(points, min(k, len(points)), cfg.niter, cfg.resampling_steps,
                                             None, cfg.seed + 1000 * level)
        parents[f"level{level + 1}"] = labels
        points = centroids
    save_arrays(_at(out, "tree.npz"), **parents)
    return {"levels": len(ks)}


def write(out: Location, config: PipelineConfig, partition: int, previous=None) -> dict:
    """The ``clusters`` part of partition ``partition``: each kept pool image's cluster at every level."""
    pool = kept_pool(out, partition)
    tree = load_arrays(_at(out, "tree.npz"))
    if len(pool.keys):
        labels = _assigner(out, config, rounds(config))(unit(pool.vectors))[1]
    else:
        labels = np.zeros(0, np.int64)
    columns = [labels]
    for level in range(2, len(tree) + 2):
        columns.append(tree[f"level{level}"][columns[-1]])
    levels = np.stack(columns, axis=1).astype(np.int32) if len(labels) else np.zeros((0, len(columns)), np.int32)
    table = pa.table({"key": pool.keys, "uri": pool.uris, "cluster": levels[:, 0], "levels": levels.tolist()},
                     schema=CLUSTERS.schema)
    path = tables.write_part(out, "clusters", partition, table)
    manifest.record(out, STAGE, f"part-{partition:05d}", [path])
    return {"in": len(pool.keys), "out": len(pool.keys)}


def clean(out: Location, config: PipelineConfig, unit_=None, previous=None) -> dict:
    """Remove the stage's work folder once every part of its table is written."""
    output.remove_tree(_dir(out))
    return {}


# -- what already exists (a rerun skips those units) -------------------------------------------------------


def _exists(out: Location, name: str) -> bool:
    return output.is_file(_at(out, name))


def _prepared(out: Location, config: PipelineConfig, units: list) -> dict:
    found = {}
    for partition in units:
        name = _part("seed", partition)
        if _exists(out, name):  # written last by prepare
            found[partition] = {"in": int(load_arrays(_at(out, name))["rows"])}
    return found


def _seeded(out: Location, config: PipelineConfig, units: list) -> dict:
    if not _exists(out, "seed.npz"):
        return {}
    info = load_arrays(_at(out, "seed.npz"))
    size = int(info["size"])
    return {units[0]: {"in": size, "k": min(int(info["ks"][0]), size), "round": 0}}


def _reduced_rounds(out: Location, config: PipelineConfig, units: list) -> set[int]:
    """The rounds of ``units`` (``(R, ...)`` tuples) that are reduced: one check a round, not one a unit."""
    return {round_ for round_ in {unit_[0] for unit_ in units} if _following(out, config, round_) is not None}


def _resampled(out: Location, config: PipelineConfig, units: list) -> dict:
    starting = [(round_, partition) for round_, partition in units
                if partition is not None and _resampling_step(config, round_)]
    reduced = _reduced_rounds(out, config, starting)
    found = {}
    for round_, partition in units:
        step = _resampling_step(config, round_)
        if partition is None or not step or round_ in reduced or _exists(out, _resampled_part(step, partition)):
            found[(round_, partition)] = {"round": round_}
    return found


def _joined(out: Location, config: PipelineConfig, round_: int) -> bool:
    """No resampling step starts at round ``round_``, or its radii are joined (or the round is reduced)."""
    step = _resampling_step(config, round_)
    return not step or _following(out, config, round_) is not None or _exists(out, f"resample/radius-{step}.npy")


def _radius_done(out: Location, config: PipelineConfig, units: list) -> dict:
    joined = {round_ for round_ in {unit_[0] for unit_ in units} if _joined(out, config, round_)}
    found = {}
    for round_, bucket in units:
        if bucket is None or round_ in joined or _exists(out, _bucket_radius(_resampling_step(config, round_), bucket)):
            found[(round_, bucket)] = {"round": round_}
    return found


def _radii_done(out: Location, config: PipelineConfig, units: list) -> dict:
    return {units[0]: {"round": units[0]}} if _joined(out, config, units[0]) else {}


def _assigned(out: Location, config: PipelineConfig, units: list) -> dict:
    reduced = _reduced_rounds(out, config, units)
    return {unit_: {"round": unit_[0]} for unit_ in units if unit_[0] in reduced}


def _updated(out: Location, config: PipelineConfig, units: list) -> dict:
    found = {round_: _following(out, config, round_) for round_ in units}
    return {round_: _reduced(config, following) for round_, following in found.items() if following is not None}


def _upper_done(out: Location, config: PipelineConfig, units: list) -> dict:
    return {units[0]: {"levels": len(load_arrays(_at(out, "seed.npz"))["ks"])}} if _exists(out, "tree.npz") else {}


def _written(out: Location, config: PipelineConfig, units: list) -> dict:
    parts = tables.done_parts(out, "clusters")
    return {partition: {} for partition in units if partition in parts}


def _partitions(out: Location, config: PipelineConfig, previous: list) -> list[int]:
    return sorted(tables.done_parts(out, "files"))


def _round(previous: list) -> int:
    return int(previous[0]["round"])


def _assign_units(out: Location, config: PipelineConfig, previous: list) -> list[tuple[int, tuple[int, ...]]]:
    info = load_arrays(_at(out, "seed.npz"))
    return [(_round(previous), group) for group in partition_groups(info["parts"], info["part_bytes"], GROUP_BYTES)]


def _resample_units(out: Location, config: PipelineConfig, previous: list) -> list[tuple[int, int | None]]:
    round_ = _round(previous)
    if not _resampling_step(config, round_):
        return [(round_, None)]
    return [(round_, partition) for partition in _partitions(out, config, previous)]


def _radius_units(out: Location, config: PipelineConfig, previous: list) -> list[tuple[int, int | None]]:
    round_ = _round(previous)
    if not _resampling_step(config, round_):
        return [(round_, None)]
    return [(round_, bucket) for bucket in range(len(load_arrays(_at(out, "seed.npz"))["bounds"]) - 1)]


STEPS = (
    Step("prepare", prepare, units=_partitions, done=_prepared),
    Step("seed", seed, done=_seeded),
    Repeat(
        (Step("resample", resample, units=_resample_units, done=_resampled),
         Step("radius", radius, units=_radius_units, done=_radius_done),
         Step("radii", radii, units=lambda out, config, previous: [_round(previous)], done=_radii_done),
         Step("assign", assign, units=_assign_units, done=_assigned),
         Step("update", update_centroids, units=lambda out, config, previous: [_round(previous)], done=_updated,
              joins=lambda units: [units[0][0]])),  # the round of the assign units
        times=rounds,
        until=lambda results: results[0]["rounds_left"] <= 0,  # a settled step skips its remaining rounds
    ),
    Step("upper", upper, done=_upper_done),
    Step("write", write, units=_partitions, done=_written),
    Step("clean", clean),
)
"""The cluster stage's shape: one ``Repeat`` iteration per Lloyd round, the round number carried in the results."""
