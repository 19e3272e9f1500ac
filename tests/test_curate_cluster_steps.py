"""Distributed k-means (curate/lloyd.py) and the cluster stage's steps (curate/cluster_steps.py): the same
Lloyd iterations as faiss, the same table however the pool is partitioned, bounded work files."""

import dataclasses
import shutil

import faiss
import numpy as np
import pyarrow.compute as pc
import pytest

from benchmarks._shared.embedding_tables import write_embedding_out
from benchmarks._shared.in_process import run_shape
from dinolab.curate import cluster_steps, sample_steps, tables
from dinolab.curate.kmeans import clusters_table
from dinolab.curate.lloyd import (Assigner, Lowest, Sums, key_scores, lowest, merge_lowest, most_similar, partial_sums,
                          sample_thresholds, unit, update)
from dinolab.curate.partitions import save_arrays, work
from dinolab.curate.steps import Repeat
from dinolab.schemas.config import ClusterConfig, load_config


def _blobs(centres: int, per_centre: int, dim: int = 16, seed: int = 0, spread: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centres, dim)).astype(np.float32)
    points = means[np.repeat(np.arange(centres), per_centre)] + spread * rng.standard_normal((centres * per_centre, dim))
    return points[rng.permutation(len(points))].astype(np.float32)


def run_steps(out, config) -> None:
    run_shape(out, config, cluster_steps.STEPS)


def _table(out) -> dict[str, list[int]]:
    table = tables.read_table(out, "clusters")
    return dict(zip(table.column("key").to_pylist(), table.column("levels").to_pylist()))


def test_lloyd_rounds_over_partitions_match_faiss_from_the_same_start():
    points = unit(_blobs(8, 40))
    start = points[:8].copy()
    reference = faiss.Kmeans(16, 8, niter=10, spherical=True, min_points_per_centroid=1, max_points_per_centroid=256)
    reference.train(points, init_centroids=start)
    centroids = start
    for _ in range(10):
        assigner = Assigner(centroids)
        total = sum((partial_sums(part, assigner) for part in np.array_split(points, 3)[1:]),
                    partial_sums(np.array_split(points, 3)[0], assigner))
        centroids = update(total, centroids)
    np.testing.assert_allclose(centroids, reference.centroids, atol=1e-5)


def test_sums_are_exact_so_grouping_does_not_matter():
    points = unit(np.random.default_rng(1).standard_normal((500, 8)))
    assigner = Assigner(points[:5])
    whole = partial_sums(points, assigner)
    pieces = [partial_sums(part, assigner) for part in np.array_split(points[::-1], 7)]
    total = pieces[0]
    for piece in pieces[1:]:
        total = total + piece
    assert np.array_equal(whole.sums, total.sums) and np.array_equal(whole.counts, total.counts)


def test_an_empty_cluster_splits_the_largest():
    previous = unit(np.eye(3, dtype=np.float32))
    sums = np.array([[3 << 20, 3 << 20, 0], [0, 0, 0], [0, 0, 1 << 20]], dtype=np.int64)
    centroids = update(Sums(sums, np.array([3, 0, 1]), 0.0), previous)
    assert np.array_equal(centroids[2], previous[2])
    assert centroids[0] @ centroids[1] > 0.999 and centroids[0][0] < centroids[0][1] and centroids[1][0] > centroids[1][1]


def test_seed_sample_is_the_same_whatever_the_partitioning():
    keys = [f"k{i}" for i in range(300)]
    vectors = np.arange(300, dtype=np.float32)[:, None]
    scores = key_scores(keys, seed=3)
    whole = lowest(scores, vectors, 10)
    parts = [lowest(scores[i::4], vectors[i::4], 10) for i in range(4)]
    merged = merge_lowest(parts, 10)
    assert np.array_equal(merged.vectors, whole.vectors) and len(set(whole.vectors[:, 0])) == 10
    assert not np.array_equal(lowest(key_scores(keys, seed=4), vectors, 10).vectors, whole.vectors)


def test_thresholds_keep_the_r_nearest_of_each_cluster():
    labels = np.array([0, 0, 0, 1, 1, 2])
    sims = np.array([0.9, 0.5, 0.7, 0.2, 0.8, 0.4], dtype=np.float32)
    radius = sample_thresholds(labels, sims, 4, per_cluster=2)
    assert radius.tolist()[:3] == [np.float32(0.7), np.float32(0.2), -np.inf] and radius[3] == -np.inf
    assert (sims >= radius[labels]).tolist() == [True, False, True, True, True, True]


def test_inverted_file_assignment_agrees_with_exact_on_most_points():
    points = unit(_blobs(400, 5, dim=32, spread=0.05))
    centroids = unit(_blobs(400, 1, dim=32, spread=0.0))
    exact = Assigner(centroids)(points)[1]
    approximate = Assigner(centroids, exact_max_k=100)
    assert approximate.index is not None
    assert np.mean(approximate(points)[1] == exact) > 0.95


def test_steps_give_the_same_table_for_any_partitioning_and_keep_only_kept_images(tmp_path):
    vectors = _blobs(12, 30)
    rng = np.random.default_rng(0)
    kept = rng.random(len(vectors)) > 0.1
    roles = ["curated" if i % 17 == 0 else "pool" for i in range(len(vectors))]
    config = load_config(None, ["cluster.ks=[12, 3]", "cluster.niter=8", "cluster.resampling_steps=1"])
    results = []
    for name, partition, parts in (("one", np.zeros(len(vectors)), False), ("five", rng.integers(0, 5, len(vectors)), False),
                                   ("nine", np.arange(len(vectors)) % 9, True)):
        out = tmp_path / name
        write_embedding_out(out, vectors, partition, roles, kept, duplicates_parts=parts)
        run_steps(out, config)
        results.append(_table(out))
    assert results[0] == results[1] == results[2]
    expected = {f"img-{i:08d}" for i in range(len(vectors)) if kept[i] and roles[i] == "pool"}
    assert set(results[0]) == expected
    assert {len(levels) for levels in results[0].values()} == {2}
    assert len({levels[0] for levels in results[0].values()}) == 12
    parents = {}
    for levels in results[0].values():  # each level-1 cluster has one parent
        assert parents.setdefault(levels[0], levels[1]) == levels[1]


def test_steps_reach_the_single_task_objective(tmp_path):
    """Random starts differ (faiss draws its own), so compare the k-means objective, not the labels: the mean
    cosine similarity of each image to its level-1 centroid is within 2 % of the single-task clusters_table's."""
    vectors = _blobs(30, 20, dim=24, spread=0.6)
    points = unit(vectors)
    config = load_config(None, ["cluster.ks=[30, 5]", "cluster.niter=20"])
    write_embedding_out(tmp_path, vectors, np.arange(len(vectors)) % 4)
    run_steps(tmp_path, config)
    table = _table(tmp_path)
    distributed = np.array([table[f"img-{i:08d}"][0] for i in range(len(vectors))])
    keys = [f"img-{i:08d}" for i in range(len(vectors))]
    single = clusters_table(keys, keys, vectors, ClusterConfig(ks=(30, 5), niter=20)).column("cluster").to_numpy()

    def objective(labels: np.ndarray) -> float:
        sums = np.zeros((labels.max() + 1, points.shape[1]))
        np.add.at(sums, labels, points)
        return float(np.mean(np.sum(points * unit(sums)[labels], axis=1)))

    assert objective(distributed) >= 0.98 * objective(single)


def test_work_files_of_a_round_are_removed_once_reduced_and_the_folder_at_the_end(tmp_path):
    vectors = _blobs(4, 20)
    config = load_config(None, ["cluster.ks=[4, 2]", "cluster.niter=3"])
    write_embedding_out(tmp_path, vectors, np.arange(len(vectors)) % 3)
    run_shape(tmp_path, config, cluster_steps.STEPS[:-1])
    work = tmp_path / "work" / "cluster"
    assert not list(work.glob("sums/*"))
    centroids = sorted(path.name for path in (work / "centroids").iterdir())
    assert centroids == [f"round-{r:04d}.npy" for r in range(4)]
    run_shape(tmp_path, config, cluster_steps.STEPS[-1:])
    assert not work.exists() and len(tables.read_table(tmp_path, "clusters")) == 80


def test_rounds_train_on_at_most_256_points_a_centroid_the_same_ones_for_any_partitioning(tmp_path):
    vectors = _blobs(2, 1000)
    config = load_config(None, ["cluster.ks=[2, 1]", "cluster.niter=2"])
    trained, tables_ = [], []
    for name, parts in (("three", 3), ("eight", 8)):
        out = tmp_path / name
        write_embedding_out(out, vectors, np.arange(len(vectors)) % parts)
        seen = []
        run_shape(out, config, cluster_steps.STEPS, seen=seen)
        trained.append([results[0]["in"] for step, results in seen if step == "update"][0])
        tables_.append(_table(out))
    assert trained[0] == trained[1] and 400 < trained[0] < 640  # ~512 of 2000
    assert tables_[0] == tables_[1] and len(tables_[0]) == 2000


def _assign_rounds(seen: list) -> list[int]:
    """The rounds of the ``assign`` units a ``run_shape(..., seen=)`` ran, one entry a unit."""
    return [unit[0] for name, unit in (entry[1] for entry in seen if entry[0] == "ran") if name == "assign"]


def test_a_run_stopped_mid_k_means_resumes_from_the_last_reduced_round(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster_steps, "GROUP_BYTES", 0)  # one assign task per partition
    vectors = _blobs(6, 30, spread=2.0)  # overlapping blobs: no round settles before the last
    config = load_config(None, ["cluster.ks=[6, 2]", "cluster.niter=4", "cluster.resampling_steps=1"])
    write_embedding_out(tmp_path / "whole", vectors, np.arange(len(vectors)) % 3)
    seen = []
    run_shape(tmp_path / "whole", config, cluster_steps.STEPS, seen=seen)
    assert sorted(set(_assign_rounds(seen))) == list(range(8))
    out = tmp_path / "stopped"
    write_embedding_out(out, vectors, np.arange(len(vectors)) % 3)

    def failing(out_, config_, unit_, previous=None):
        if unit_ == (6, (1,)):  # round 6 of 8: inside the resampling step
            raise RuntimeError("worker lost")
        return cluster_steps.assign(out_, config_, unit_, previous)

    with pytest.raises(RuntimeError):
        run_shape(out, config, _with_assign(cluster_steps.STEPS, failing))
    seen = []
    run_shape(out, config, cluster_steps.STEPS, seen=seen)
    assert _assign_rounds(seen) == [6, 6, 6, 7, 7, 7]  # rounds 6 and 7 only, three partitions each
    assert _table(out) == _table(tmp_path / "whole")


def test_a_round_that_moves_no_centroid_ends_its_resampling_step_with_the_same_table(tmp_path, monkeypatch):
    vectors = _blobs(6, 30)  # well-separated blobs: Lloyd settles in a few rounds
    config = load_config(None, ["cluster.ks=[6, 2]", "cluster.niter=6", "cluster.resampling_steps=1"])
    ran, found = {}, {}
    for name, settle in (("settling", True), ("every round", False)):
        if not settle:  # a round that moves nothing still hands its centroids to the next round
            monkeypatch.setattr(cluster_steps, "settled", lambda *centroids: False)
        out = tmp_path / name
        write_embedding_out(out, vectors, np.arange(len(vectors)) % 3)
        seen = []
        run_shape(out, config, cluster_steps.STEPS[:-1], seen=seen)
        ran[name], found[name] = sorted(set(_assign_rounds(seen))), _table(out)
        centroids = out / "work" / "cluster" / "centroids"
        assert (centroids / "round-0012.npy").exists()  # what upper and write read
    assert ran["every round"] == list(range(12))
    steps = [set(ran["settling"]) & set(range(6)), set(ran["settling"]) & set(range(6, 12))]
    assert all(0 < len(rounds) < 6 for rounds in steps)  # each step began and settled before its sixth round
    assert found["settling"] == found["every round"]
    # a rerun finds the settled rounds done: it runs nothing
    seen = []
    monkeypatch.undo()
    run_shape(tmp_path / "settling", config, cluster_steps.STEPS[:-1], seen=seen)
    assert not [entry for entry in seen if entry[0] == "ran"]


def _with_assign(shape, function):
    """``shape`` with the ``assign`` step running ``function``."""
    out = []
    for item in shape:
        if isinstance(item, Repeat):
            out.append(Repeat(_with_assign(item.steps, function), item.times, item.until))
        elif item.name == "assign":
            out.append(dataclasses.replace(item, run=function))
        else:
            out.append(item)
    return tuple(out)


def test_the_inverted_file_over_many_centroids_is_built_once_a_round_and_the_table_stays_partition_free(tmp_path):
    vectors = _blobs(40, 10, dim=8)
    config = load_config(None, ["cluster.ks=[40, 4]", "cluster.niter=3", "cluster.exact_max_k=16"])
    results = []
    for name, parts in (("two", 2), ("five", 5)):
        out = tmp_path / name
        write_embedding_out(out, vectors, np.arange(len(vectors)) % parts)
        run_shape(out, config, cluster_steps.STEPS[:-1])
        assert len(list((out / "work" / "cluster" / "centroids").glob("*.ivf.npy"))) == 4  # rounds 0..3
        results.append(_table(out))
    assert results[0] == results[1] and len({levels[0] for levels in results[0].values()}) > 30


def test_partitions_with_no_kept_pool_image_get_empty_parts(tmp_path):
    vectors = _blobs(4, 30)
    partition = np.arange(len(vectors)) % 4
    kept = partition != 2  # dedup removed every pool image of partition 2
    roles = ["curated" if p == 3 else "pool" for p in partition]  # partition 3 holds curated images only
    write_embedding_out(tmp_path, vectors, partition, roles, kept)
    config = load_config(None, ["cluster.ks=[4, 2]", "cluster.niter=3", "cluster.resampling_steps=1"])
    run_steps(tmp_path, config)
    assert tables.done_parts(tmp_path, "clusters") == {0, 1, 2, 3}
    assert len(tables.read_part(tmp_path, "clusters", 2)) == len(tables.read_part(tmp_path, "clusters", 3)) == 0
    assert len(tables.read_table(tmp_path, "clusters")) == 60
    for method in (["sample.method=balanced"], ["sample.per_query=2"], ["sample.retrieval=clusters"]):
        shutil.rmtree(tmp_path / "tables" / "selection", ignore_errors=True)
        run_shape(tmp_path, load_config(None, method), sample_steps.STEPS)
        assert tables.done_parts(tmp_path, "selection") == {0, 1, 2, 3}
        assert len(tables.read_part(tmp_path, "selection", 2)) == len(tables.read_part(tmp_path, "selection", 3)) == 0


def _resampled_pool(out, config, parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> np.ndarray:
    """Write ``parts`` as the resample step's files of resampling step 1 (seed.npz as the seed step writes it);
    the bucket bounds."""
    bounds = cluster_steps.bucket_bounds(k, len(parts))
    size = sum(len(labels) for labels, _ in parts)
    save_arrays(work(out, "cluster") / "seed.npz", size=np.array(size), ks=np.array([k]), bounds=bounds)
    for partition, (labels, sims) in enumerate(parts):
        cluster_steps.save_pairs(out, 1, partition, labels.astype(np.int32), sims)
    return bounds


def _run_radius(out, config, buckets: int) -> tuple[np.ndarray, list[dict]]:
    round_ = config.cluster.niter  # resampling step 1 starts here
    units = cluster_steps._radius_units(out, config, [{"round": round_}])
    assert units == [(round_, bucket) for bucket in range(buckets)]
    results = [cluster_steps.radius(out, config, unit) for unit in units]
    cluster_steps.radii(out, config, round_, results)
    return np.load(work(out, "cluster") / "resample" / "radius-1.npy"), results


@pytest.mark.parametrize("partitions", [1, 4, 30])
def test_radius_by_buckets_gives_the_thresholds_of_the_whole_pool(tmp_path, monkeypatch, partitions):
    """Uneven clusters (empty ones, ones below r, one many times r), tied similarities, uneven partitions:
    the per-bucket radii joined are sample_thresholds of every pair, bit for bit."""
    rng = np.random.default_rng(partitions)
    k, size = 23, 3000
    labels = np.minimum(rng.geometric(0.25, size) - 1, k - 1)
    labels[labels == 5] = 6  # an empty cluster
    sims = np.round(rng.random(size), 2).astype(np.float32)  # many ties
    cuts = np.sort(rng.choice(np.arange(1, size), partitions - 1, replace=False))
    parts = list(zip(np.split(labels, cuts), np.split(sims, cuts)))
    config = load_config(None, ["cluster.niter=2", "cluster.resampling_steps=1"])
    bounds = _resampled_pool(tmp_path, config, parts, k)
    pruned = []
    monkeypatch.setattr(cluster_steps, "most_similar", lambda *a: pruned.append(1) or most_similar(*a))
    joined, _ = _run_radius(tmp_path, config, len(bounds) - 1)
    expected = sample_thresholds(labels, sims, k, size // k)
    assert joined.dtype == expected.dtype and np.array_equal(joined, expected)
    counts = np.bincount(labels, minlength=k)
    assert (counts < size // k).sum() > 3 and counts[5] == 0 and counts.max() > 4 * (size // k)
    assert np.isneginf(joined[counts < size // k]).all() and np.isfinite(joined[counts >= size // k]).all()
    assert pruned if partitions > 1 else not pruned  # the largest cluster is cut to its r nearest as it comes
    assert not list((work(tmp_path, "cluster") / "resample").glob("*.pairs"))  # gone once joined


def test_a_radius_task_reads_only_its_buckets_pairs(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    k, size, partitions = 40, 4000, 8
    labels = rng.integers(0, k, size)
    sims = rng.random(size).astype(np.float32)
    parts = list(zip(np.array_split(labels, partitions), np.array_split(sims, partitions)))
    config = load_config(None, ["cluster.niter=2", "cluster.resampling_steps=1"])
    bounds = _resampled_pool(tmp_path, config, parts, k)
    assert len(bounds) - 1 == partitions and np.all(np.diff(bounds) == k // partitions)
    read = []
    real = cluster_steps.output.read_bytes

    def counting(path, start=None, end=None):
        data = real(path, start, end)
        read.append((str(path), len(data)))
        return data

    monkeypatch.setattr(cluster_steps.output, "read_bytes", counting)
    _, results = _run_radius(tmp_path, config, partitions)
    monkeypatch.undo()
    for bucket, result in enumerate(results):
        in_bucket = int(np.sum((labels >= bounds[bucket]) & (labels < bounds[bucket + 1])))
        assert result["in"] == in_bucket < size // 4
    pair_bytes = sum(length for path, length in read if path.endswith(".pairs"))
    assert pair_bytes == cluster_steps.PAIR.itemsize * size  # every pair read once, by the task of its bucket
    assert all(length <= 16 for path, length in read if path.endswith(".buckets"))  # two offsets a partition


def test_partition_groups_take_consecutive_partitions_up_to_the_budget():
    assert cluster_steps.partition_groups([0, 1, 2, 3, 5], [40, 50, 10, 200, 30], 100) == [(0, 1), (2,), (3,), (5,)]
    assert cluster_steps.partition_groups(range(21), [5] * 21, 64) == [tuple(range(10)), tuple(range(10, 21))]
    assert cluster_steps.partition_groups([0, 1, 2], [10, 10, 10], 0) == [(0,), (1,), (2,)]
    assert cluster_steps.partition_groups([], [], 100) == []


def test_grouped_assign_tasks_give_the_same_table_as_one_per_partition(tmp_path, monkeypatch):
    vectors = _blobs(6, 30)
    config = load_config(None, ["cluster.ks=[6, 2]", "cluster.niter=3", "cluster.resampling_steps=1"])
    found = {}
    for budget in (0, 2 * 30 * vectors.shape[1] * 4, 1 << 30):  # one partition a task, two, all six
        monkeypatch.setattr(cluster_steps, "GROUP_BYTES", budget)
        out = tmp_path / f"budget-{budget}"
        write_embedding_out(out, vectors, np.arange(len(vectors)) // 30)  # six partitions of 30 rows
        seen = []
        run_shape(out, config, cluster_steps.STEPS, seen=seen)
        rounds = _assign_rounds(seen)
        found[budget] = (_table(out), len(rounds) // len(set(rounds)))  # tasks a round
    assert [tasks for _, tasks in found.values()] == [6, 3, 1]
    assert len({repr(table) for table, _ in found.values()}) == 1


def test_cluster_sums_are_the_same_integers_whatever_the_conversion_blocks(monkeypatch):
    from dinolab.curate import lloyd

    rng = np.random.default_rng(3)
    points = lloyd.unit(rng.standard_normal((1000, 16)))
    labels = rng.integers(0, 7, 1000)
    whole = lloyd.cluster_sums(points, labels, np.ones(1000, np.float32), 7)
    monkeypatch.setattr(lloyd, "SUM_CHUNK", 37)
    blocks = lloyd.cluster_sums(points, labels, np.ones(1000, np.float32), 7)
    expected = np.zeros((7, 16), np.int64)
    np.add.at(expected, labels, np.rint(points.astype(np.float64) * lloyd.SCALE).astype(np.int64))
    assert np.array_equal(whole.sums, expected) and np.array_equal(blocks.sums, expected)
    assert np.array_equal(blocks.counts, np.bincount(labels, minlength=7))
