"""The sharded kNN dedup (curate/knn_dedup.py) against the single-task duplicates_table, and its pieces."""

import faiss
import numpy as np
import pyarrow as pa
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as scipy_components

from dinolab.curate import components as cc
from dinolab.curate import knn, knn_dedup, tables
from dinolab.curate.dedup import duplicates_table
from dinolab.schemas.config import DedupConfig, PipelineConfig
from dinolab.schemas.tables import utc_now


def _config(**dedup) -> PipelineConfig:
    return PipelineConfig(dedup=DedupConfig(**dedup))


def _planted(count: int, dim: int, seed: int = 0):
    """Gaussian vectors, every 10th row a noisy copy of the row before it; every 25th a byte copy of row 0."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    copies = np.arange(10, count, 10)
    vectors[copies] = vectors[copies - 1] + 0.2 * rng.standard_normal((len(copies), dim)).astype(np.float32)
    digests = [f"{i:064x}" for i in range(count)]
    for row in range(25, count, 25):
        digests[row] = digests[3]
    sizes = rng.choice([64, 96], size=count)  # resolution ties broken by key
    return vectors, digests, sizes, copies


def _write_lake(out, vectors, digests, sizes, partitions: int, evals: dict[str, np.ndarray]):
    """``images`` and ``embeddings`` parts: pool rows spread over partitions (keys shuffled), eval sets after."""
    count = len(vectors)
    keys = [f"img{i:05d}" for i in range(count)]
    rng = np.random.default_rng(1)
    where = rng.integers(0, partitions, size=count)
    for part in range(partitions):
        rows = [int(i) for i in rng.permutation(np.flatnonzero(where == part))]
        names = [keys[i] for i in rows]
        roles, sets, matrix = ["pool"] * len(rows), ["pool"] * len(rows), [vectors[rows]]
        uris, shas, pixels = [f"/lake/{keys[i]}.png" for i in rows], [digests[i] for i in rows], [sizes[i] for i in rows]
        for name, reference in sorted(evals.items()):
            mine = np.arange(len(reference))[np.arange(len(reference)) % partitions == part]
            names += [f"{name}{i:04d}" for i in mine]
            roles += ["eval"] * len(mine)
            sets += [name] * len(mine)
            matrix.append(reference[mine])
            uris += [f"/eval/{name}{i}.png" for i in mine]
            shas += [f"e{name}{i}" for i in mine]
            pixels += [10] * len(mine)
        n = len(names)
        tables.write_array(out, "embeddings", part, np.concatenate(matrix),
                           pa.table({"key": names, "image_path": uris, "set": sets, "role": roles}))
        tables.write_part(out, "embeddings", part, pa.table({
            "key": names, "role": roles, "set": sets, "row": np.arange(n, dtype=np.int32)}))
        tables.write_part(out, "images", part, pa.table({
            "key": names, "uri": uris, "role": roles, "set": sets, "partition": np.full(n, part, np.int32),
            "bytes": np.full(n, 100, np.int64), "sha256": shas, "width": np.array(pixels, np.int32),
            "height": np.array(pixels, np.int32), "format": ["PNG"] * n, "phash": [None] * n,
            "status": ["ok"] * n, "error": [None] * n, "provenance": [None] * n, "ingested_at": [utc_now()] * n}))
    pool = pa.table({"key": keys, "uri": [f"/lake/{k}.png" for k in keys], "sha256": digests,
                     "width": np.asarray(sizes, np.int32), "height": np.asarray(sizes, np.int32)})
    return pool


def _rows(table: pa.Table) -> dict[str, dict]:
    return {row["key"]: row for row in table.to_pylist()}


def _same_groups(mine: dict, reference: dict) -> bool:
    """Equal partitions of the keys into groups, whatever the group ids."""
    pairs = {(mine[key]["group"], reference[key]["group"]) for key in reference}
    return len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


@pytest.mark.parametrize("partitions,shard_vectors,bucket", [(1, 10_000, None), (4, 130, None), (4, 130, 64)])
def test_sharded_dedup_equals_the_single_task_table(tmp_path, monkeypatch, partitions, shard_vectors, bucket):
    if bucket:  # several sha256 buckets (7 of 64 rows each)
        monkeypatch.setattr(knn_dedup, "EXACT_BUCKET", bucket)
    vectors, digests, sizes, _ = _planted(400, 16)
    evals = {"test": vectors[[5, 77]] + 0.3, "val": vectors[[77, 201]] + 0.01}
    pool = _write_lake(tmp_path, vectors, digests, sizes, partitions, evals)
    settings = dict(k=8, threshold=0.9, eval_threshold=0.8, index="flat")
    result = knn_dedup.run_all(tmp_path, _config(**settings, shard_vectors=shard_vectors))
    mine = _rows(tables.read_table(tmp_path, "duplicates"))
    reference = _rows(duplicates_table(pool, vectors, evals, DedupConfig(**settings)))
    assert result == {"in": 400, "out": sum(r["kept"] for r in reference.values())}
    assert set(mine) == set(reference) and _same_groups(mine, reference)
    for key, row in reference.items():
        assert {**mine[key], "group": 0, "similarity": 0} == {**row, "group": 0, "similarity": 0}, key
        assert mine[key]["similarity"] == pytest.approx(row["similarity"], abs=1e-6)
    reasons = {row["reason"] for row in reference.values()}
    assert {"copy", "exact", "leak:val"} <= reasons  # the case covers every rule
    if bucket:
        assert len(knn_dedup.exact_units(tmp_path)) == 7
    if partitions == 1:
        assert [mine[key]["group"] for key in reference] == [row["group"] for row in reference.values()]


def test_planted_pairs_are_found_through_ivf_shards(tmp_path):
    vectors, digests, sizes, copies = _planted(3000, 32, seed=2)
    _write_lake(tmp_path, vectors, digests, sizes, 3, {})
    knn_dedup.run_all(tmp_path, _config(k=8, threshold=0.9, index="ivf", nprobe=8, shard_vectors=1100))
    assert knn_dedup.read_plan(tmp_path).pool.kind == "ivf" and len(knn_dedup.read_plan(tmp_path).pool.shards) == 3
    rows = tables.read_table(tmp_path, "duplicates").to_pylist()
    group = {row["key"]: row["group"] for row in rows}
    found = [group[f"img{c:05d}"] == group[f"img{c - 1:05d}"] for c in copies]
    assert np.mean(found) == 1.0


def test_every_task_holds_one_partition_and_one_shard(tmp_path, monkeypatch):
    vectors, digests, sizes, _ = _planted(600, 8, seed=3)
    _write_lake(tmp_path, vectors, digests, sizes, 6, {"test": vectors[:3]})
    loaded_index, loaded_rows = [], []
    read_index, read_vectors = knn_dedup._load_index, knn_dedup._vectors
    monkeypatch.setattr(knn_dedup, "_load_index", lambda path: loaded_index.append(read_index(path).ntotal)
                        or read_index(path))
    monkeypatch.setattr(knn_dedup, "_vectors", lambda *args: loaded_rows.append(len(args[3])) or read_vectors(*args))
    knn_dedup.run_all(tmp_path, _config(k=4, threshold=0.9, index="flat", shard_vectors=120))
    plan = knn_dedup.read_plan(tmp_path)
    assert len(plan.pool.shards) >= 5 and max(loaded_index) <= max(120, *plan.pool.counts.values())
    assert max(loaded_rows) <= max(plan.pool.counts.values())


@pytest.mark.parametrize("chunk", [1 << 22, 7])  # labels and group flags in one chunk, and in many
def test_union_find_matches_scipy_whatever_the_batches(monkeypatch, chunk):
    monkeypatch.setattr(cc, "CHUNK", chunk)
    rng = np.random.default_rng(0)
    count = 2000
    first, second = rng.integers(0, count, 1500), rng.integers(0, count, 1500)
    graph = coo_matrix((np.ones(1500), (first, second)), shape=(count, count))
    _, expected = scipy_components(graph, directed=False)
    sizes = np.bincount(expected)[expected]
    for batches in (1, 7):
        parent = cc.forest(count)
        assert parent.dtype == np.int32  # 4 bytes an image
        order = rng.permutation(1500)
        for part in np.array_split(order, batches):
            cc.join(parent, first[part], second[part])
        roots = cc.labels(parent)
        assert len(np.unique(roots)) == len(np.unique(expected)) == cc.component_count(roots)
        assert all(len(set(roots[expected == c])) == 1 for c in np.unique(expected)[:200])
        assert np.all(roots <= np.arange(count)) and np.all(roots[roots] == roots)  # root = smallest id
        assert np.array_equal(cc.in_groups(roots), sizes > 1)


def test_merged_shard_top_k_equals_one_flat_search():
    rng = np.random.default_rng(4)
    vectors = knn.unit_rows(rng.standard_normal((500, 8)))
    plan = knn.plan_index({0: 200, 1: 150, 2: 150}, 8, "flat", shard_vectors=200)
    trained = knn.train_index(plan, vectors[:0])
    shards = [knn.add_to_shard(trained, [(np.arange(plan.offsets[p], plan.offsets[p] + plan.counts[p]),
                                          vectors[plan.offsets[p]:plan.offsets[p] + plan.counts[p]]) for p in s])
              for s in plan.shards]
    ids = np.arange(500)
    merged = knn.merge_top_k([knn.search_shard(s, ids, vectors, 5, -1.0) for s in shards], 5)
    whole = knn.search_shard(knn.add_to_shard(trained, [(ids, vectors)]), ids, vectors, 5, -1.0)
    assert len(plan.shards) == 3
    assert np.array_equal(merged.query, whole.query) and np.array_equal(merged.neighbor, whole.neighbor)


def test_a_lake_of_evaluation_images_only_gives_an_empty_table(tmp_path):
    vectors, digests, sizes, _ = _planted(0, 8)
    _write_lake(tmp_path, vectors, digests, sizes, 2, {"test": np.eye(8, dtype=np.float32)[:3]})
    assert knn_dedup.run_all(tmp_path, _config(index="flat")) == {"in": 0, "out": 0}
    assert tables.read_table(tmp_path, "duplicates").num_rows == 0


def test_a_rerun_skips_the_units_whose_files_exist_and_cleaning_finishes(tmp_path):
    vectors, digests, sizes, _ = _planted(300, 8, seed=5)
    _write_lake(tmp_path, vectors, digests, sizes, 3, {})
    config = _config(k=4, threshold=0.9, index="flat", shard_vectors=100)
    knn_dedup.run_all(tmp_path, config)
    units = knn_dedup.search_units(tmp_path)
    assert knn_dedup.done_units("search", tmp_path, units) == units and len(units) == 9
    assert knn_dedup.done_units("prepare", tmp_path, [0, 1, 2, 3]) == [0, 1, 2]
    assert knn_dedup.done_units("train", tmp_path, [None]) == [None]
    assert not knn_dedup.finished(tmp_path)
    knn_dedup.clean(tmp_path)
    assert knn_dedup.finished(tmp_path) and not (tmp_path / "work").exists()
    assert knn_dedup.done_units("search", tmp_path, units) == []


def test_preassigned_lists_give_the_same_ivf_search():
    rng = np.random.default_rng(6)
    vectors = knn.unit_rows(rng.standard_normal((4000, 16)))
    plan = knn.plan_index({0: 2000, 1: 2000}, 16, "ivf", shard_vectors=2000)
    trained = knn.train_index(plan, vectors[knn.sample_ids(plan)])
    shard = knn.add_to_shard(trained, [(np.arange(2000, 4000), vectors[2000:])])
    ids = np.arange(2000)
    lists = knn.coarse_lists(trained, vectors[:2000], nprobe=4)
    plain = knn.search_shard(shard, ids, vectors[:2000], 5, 0.0, nprobe=4)
    reused = knn.search_shard(shard, ids, vectors[:2000], 5, 0.0, nprobe=4, lists=lists)
    assert len(plain) > 1000 and np.array_equal(plain.neighbor, reused.neighbor)
    assert np.array_equal(plain.similarity, reused.similarity)


def test_the_declared_dedup_steps_run_by_the_dispatcher_resume_and_give_the_same_table(tmp_path):
    from dataclasses import replace

    from dinolab.curate import stages
    from dinolab.pipelines.dispatch import LoopExecutor, run_stage

    vectors, digests, sizes, _ = _planted(400, 16, seed=7)
    config = _config(k=8, threshold=0.9, eval_threshold=0.8, index="flat", shard_vectors=150, descriptor="embeddings")
    found, ran = [], {}
    for name in ("loop", "full", "resumed"):
        out = tmp_path / name
        _write_lake(out, vectors, digests, sizes, 3, {"test": vectors[[5, 77]] + 0.01})
        if name == "loop":
            knn_dedup.run_all(out, config)
        elif name == "full":
            ran[name] = run_stage(LoopExecutor(), out, config, stages.STAGES["dedup"])
        else:  # interrupted after the index shards, then run again: the done units are not redone
            partial = replace(stages.STAGES["dedup"], steps=stages.KNN_STEPS[:5])
            ran["partial"] = run_stage(LoopExecutor(), out, config, partial)
            ran[name] = run_stage(LoopExecutor(), out, config, stages.STAGES["dedup"])
        if name != "loop":
            assert stages.is_done(out, "dedup") and not (out / "work").exists()
        found.append(tables.read_table(out, "duplicates"))
    assert ran["partial"] > 3 and ran["partial"] + ran["resumed"] == ran["full"]
    assert found[0].equals(found[1]) and found[0].equals(found[2])


@pytest.mark.parametrize("trim", [None, 50])
def test_search_by_list_finds_what_faiss_ivf_search_finds(monkeypatch, trim):
    if trim:  # tiny blocks and trims: the cut to each query's top k happens many times along the lists
        monkeypatch.setattr(knn, "TRIM_LINKS", trim)
        monkeypatch.setattr(knn, "BLOCK_FLOATS", 16 * 40)
    rng = np.random.default_rng(7)
    vectors = knn.unit_rows(rng.standard_normal((3000, 16)) + 2.0 * rng.standard_normal((10, 16))[rng.integers(0, 10, 3000)])
    plan = knn.plan_index({0: 3000}, 16, "ivf", shard_vectors=3000)
    trained = knn.train_index(plan, vectors[knn.sample_ids(plan)])
    shard = knn.add_to_shard(trained, [(np.arange(3000) + 10_000, vectors)])
    queries, ids = vectors[:700], np.arange(700)
    lists, centroid_sims = knn.coarse_lists(trained, queries, nprobe=5)
    found = knn.search_shard(shard, ids, queries, 7, 0.92, nprobe=5, lists=(lists, centroid_sims))
    ivf = faiss.extract_index_ivf(shard)
    ivf.nprobe = 5
    sims, neighbors = ivf.search_preassigned(queries, 7, lists, centroid_sims)  # faiss's own scan of those lists
    kept = sims >= 0.92
    expected = sorted(zip(np.repeat(ids, 7).reshape(kept.shape)[kept].tolist(), neighbors[kept].tolist()))
    assert 2000 < len(expected) < 700 * 7  # thresholds cut some top-7 lists short
    assert sorted(zip(found.query.tolist(), found.neighbor.tolist())) == expected
    order = np.lexsort((found.neighbor, found.query))
    reference = np.lexsort((neighbors[kept], np.repeat(ids, 7).reshape(kept.shape)[kept]))
    np.testing.assert_allclose(found.similarity[order], sims[kept][reference], atol=1e-5)
    assert np.all(np.diff(found.query) >= 0)  # ordered as merge_top_k's: by query, then similarity
