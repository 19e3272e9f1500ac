"""The sample stage's steps (curate/sample_steps.py) against the single-task selection_table, and the same
selection however the lake is partitioned."""

from collections import Counter

import numpy as np
import pytest

from benchmarks._shared.embedding_tables import write_embedding_out
from benchmarks._shared.in_process import run_shape
from dinolab.curate import cluster_steps, sample_steps, tables
from dinolab.curate.sample import selection_table
from dinolab.schemas.config import load_config


def _vectors(n: int = 400, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((10, dim))
    return (means[rng.integers(0, 10, n)] + 0.4 * rng.standard_normal((n, dim))).astype(np.float32)


def _run(module, out, config) -> None:
    run_shape(out, config, module.STEPS)


def _selection(out) -> dict[str, tuple]:
    table = tables.read_table(out, "selection")
    return {row["key"]: (row["method"], row["query_key"], row["cluster"], row["similarity"]) for row in table.to_pylist()}


def _lake(out, partition, overrides: list[str], curated_every: int = 8):
    vectors = _vectors()
    roles = ["curated" if i % curated_every == 0 else "pool" for i in range(len(vectors))]
    kept = np.array([i % 13 != 5 for i in range(len(vectors))])
    write_embedding_out(out, vectors, partition, roles, kept)
    config = load_config(None, ["cluster.ks=[12, 3]", "cluster.niter=6", *overrides])
    _run(cluster_steps, out, config)
    _run(sample_steps, out, config)
    return vectors, roles, config


def _single_task(out, vectors, roles, config):
    clusters = tables.read_table(out, "clusters").sort_by("key")
    keys = clusters.column("key").to_pylist()
    index = [int(key[4:]) for key in keys]
    curated = [i for i in range(len(vectors)) if roles[i] == "curated"]
    levels = np.array(clusters.column("levels").to_pylist())
    table = selection_table(keys, clusters.column("uri").to_pylist(), vectors[index], levels,
                            [f"img-{i:08d}" for i in curated], vectors[curated], config.sample)
    return {row["key"]: (row["method"], row["query_key"], row["cluster"], row["similarity"]) for row in table.to_pylist()}


@pytest.mark.parametrize("overrides", [["sample.per_query=3", "sample.min_similarity=0.5"],
                                       ["sample.method=all"]])
def test_neighbours_and_all_equal_the_single_task(tmp_path, overrides):
    vectors, roles, config = _lake(tmp_path, np.arange(400) % 5, overrides)
    mine, single = _selection(tmp_path), _single_task(tmp_path, vectors, roles, config)
    assert mine.keys() == single.keys() and len(mine) > 20
    for key, (method, query, cluster, similarity) in mine.items():
        assert (method, query, cluster) == single[key][:3]
        assert similarity == pytest.approx(single[key][3], abs=1e-5) if similarity is not None else single[key][3] is None


def test_balanced_takes_as_many_from_each_cluster_as_the_single_task(tmp_path):
    """The budgets are the single task's (same allocation, same random stream); which images a cluster gives
    is drawn by key score instead of by row, so compare the number drawn from each cluster."""
    vectors, roles, config = _lake(tmp_path, np.arange(400) % 5, ["sample.method=balanced", "sample.target=90"])
    mine, single = _selection(tmp_path), _single_task(tmp_path, vectors, roles, config)
    assert len(mine) == 90
    assert Counter(v[2] for v in mine.values()) == Counter(v[2] for v in single.values())


def test_cluster_retrieval_takes_as_many_from_each_hit_cluster_as_the_single_task(tmp_path):
    overrides = ["sample.retrieval=clusters", "sample.per_cluster=5", "sample.min_similarity=0.3",
                 "sample.min_cluster_hits=2"]
    vectors, roles, config = _lake(tmp_path, np.arange(400) % 5, overrides)
    mine, single = _selection(tmp_path), _single_task(tmp_path, vectors, roles, config)
    assert Counter(v[2] for v in mine.values()) == Counter(v[2] for v in single.values()) and mine
    curated = {f"img-{i:08d}": vectors[i] for i in range(len(vectors)) if roles[i] == "curated"}
    for key, (_, query, _, similarity) in mine.items():  # the recorded query and similarity are the real ones
        a, b = vectors[int(key[4:])], curated[query]
        assert similarity == pytest.approx(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), abs=1e-5)
        assert similarity >= 0.3


@pytest.mark.parametrize("overrides", [["sample.method=balanced"], ["sample.retrieval=clusters", "sample.per_cluster=4"],
                                       ["sample.per_query=2"]])
def test_selection_does_not_depend_on_the_partitioning(tmp_path, overrides):
    results = []
    for name, partition in (("two", np.arange(400) % 2), ("seven", np.random.default_rng(1).integers(0, 7, 400))):
        _lake(tmp_path / name, partition, overrides)
        results.append(_selection(tmp_path / name))
        assert tables.done_parts(tmp_path / name, "selection") == tables.done_parts(tmp_path / name, "files")
    assert results[0] == results[1] and results[0]


@pytest.mark.parametrize("overrides", [["sample.per_query=3", "sample.min_similarity=0.5"], ["sample.method=auto"],
                                       ["sample.retrieval=clusters", "sample.per_cluster=5", "sample.min_cluster_hits=2"],
                                       ["sample.method=balanced", "sample.target=90"]])
def test_blocks_of_three_queries_select_what_one_block_does(tmp_path, monkeypatch, overrides):
    """50 curated queries spread over 5 partitions: 17 blocks of at most 3 against 5 pool partitions."""
    _, roles, _ = _lake(tmp_path / "one", np.arange(400) % 5, overrides)
    monkeypatch.setattr(sample_steps, "QUERY_BLOCK", 3)
    _lake(tmp_path / "three", np.arange(400) % 5, overrides)
    assert roles.count("curated") == 50
    assert _selection(tmp_path / "three") == _selection(tmp_path / "one") and _selection(tmp_path / "one")
    assert not (tmp_path / "three" / "work" / "sample").exists()


def test_a_scan_task_holds_one_pool_partition_and_one_block_of_queries(tmp_path, monkeypatch):
    monkeypatch.setattr(sample_steps, "QUERY_BLOCK", 3)
    vectors = _vectors()
    partition = np.arange(400) % 5
    roles = ["curated" if i % 8 == 0 else "pool" for i in range(len(vectors))]
    write_embedding_out(tmp_path, vectors, partition, roles, np.ones(len(vectors), bool))
    config = load_config(None, ["cluster.ks=[12, 3]", "cluster.niter=6", "sample.per_query=2"])
    _run(cluster_steps, tmp_path, config)
    sample_steps.prepare(tmp_path, config)
    blocks = [sample_steps._query_block(tmp_path, b) for b in range(17)]
    curated = sorted((f"img-{i:08d}", i) for i in range(len(vectors)) if roles[i] == "curated")
    assert [len(keys) for keys, _ in blocks] == [3] * 16 + [2]  # in key order across the partitions
    assert np.concatenate([keys for keys, _ in blocks]).tolist() == [key for key, _ in curated]
    assert np.array_equal(np.concatenate([v for _, v in blocks]), vectors[[i for _, i in curated]])

    loaded, pools = [], []
    load_arrays, kept_pool = sample_steps.load_arrays, sample_steps.kept_pool
    def recorded(path):
        loaded.append((str(path), load_arrays(path)))
        return loaded[-1][1]

    monkeypatch.setattr(sample_steps, "load_arrays", recorded)
    monkeypatch.setattr(sample_steps, "kept_pool", lambda out, p: pools.append(p) or kept_pool(out, p))
    units = sample_steps._scan_units(tmp_path, config)
    assert sorted(units) == [(p, b) for p in range(5) for b in range(17)]
    for part, block in units:
        loaded.clear()
        pools.clear()
        sample_steps.scan(tmp_path, config, (part, block))
        queries = [arrays for path, arrays in loaded if "/queries/" in path]
        assert [path for path, _ in loaded if "/queries/" in path] == [
            str(tmp_path / "work" / "sample" / "queries" / f"block-{block:05d}.npz")]
        assert len(queries[0]["vectors"]) <= 3 and pools == [part]
    seen = []  # the stage run on: prepare and every scan unit are done, each query block is merged in its own task
    run_shape(tmp_path, config, sample_steps.STEPS, seen=seen)
    ran = [unit[0] for entry, unit in seen if entry == "ran"]
    assert ran.count("prepare") == ran.count("scan") == 0 and ran.count("plan") == 17 and ran.count("write") == 5
    assert tables.done_parts(tmp_path, "selection") == set(range(5))
