"""The scale benchmark through ``curate sample``: its lake carries the planted answers, and a tiny run on 2 local
workers measures recall, precision, stage times and per-worker memory from them."""

from __future__ import annotations

import numpy as np

from benchmarks import scale_run
from benchmarks._shared.mixture_lake import read_mixture_lake, write_mixture_lake
from benchmarks._shared.task_memory import Sizes, task_bytes
from benchmarks._shared.worker_memory import step_of
from dinolab.curate.lakes.embeddings import detect_folder, vectors, rows


def test_the_mixture_lake_plants_copies_near_their_sources_and_far_from_the_rest(tmp_path):
    lake = write_mixture_lake(tmp_path, size=2000, dim=256, components=4, queries=50, file_rows=700)
    truth = lake.truth()
    assert read_mixture_lake(tmp_path) == lake  # what --resume reads back instead of writing the lake again
    files = detect_folder(str(lake.pool))
    assert len(files) == 3 and len(detect_folder(str(lake.curated))) == 1
    uris = [uri for file in files for uri in rows(file)[1]]
    pool = vectors(uris)
    assert pool.shape == (2000, 256) and len(truth["copies"]) == 20 == lake.copies
    assert not set(truth["copies"]) & set(truth["sources"])
    copy_cos = np.sum(pool[truth["copies"]] * pool[truth["sources"]], axis=1)
    assert copy_cos.min() > 0.8  # ~0.9 by construction: above the dedup threshold 0.6
    others = pool[:300] @ pool[:300].T
    np.fill_diagonal(others, 0)
    planted = set(truth["copies"]) | set(truth["sources"])
    natural = [others[i, j] for i in range(300) for j in range(300) if i not in planted or j not in planted]
    assert max(natural) < 0.6  # same-component neighbours stay below it (~0.25 apart on average)
    assert set(truth["query_labels"]) <= set(truth["curated_components"]) and lake.curated_components == 1


def test_step_names_come_from_the_dispatchers_task_keys():
    assert step_of("dedup-search-24-units-0a1b2c3d-4711") == "dedup search"
    assert step_of("cluster-prepare-3-partitions-0a1b2c3d-0") == "cluster prepare"
    assert step_of("sample-plan-0a1b2c3d-12") == "sample plan"


def test_a_tiny_run_through_curate_sample_measures_recall_precision_and_memory(tmp_path):
    result = scale_run.main(["--size", "3000", "--queries", "100", "--file-rows", "1000", "--set", "cluster.niter=3",
                             "--dir", str(tmp_path), "--json", str(tmp_path / "result.json")])
    run, quality, stages = result["run"], result["quality"], result["stages"]
    assert run["exit_code"] == 0 and run["command"][:2] == ["curate", "sample"]
    assert result["completed_without_restart"] and run["memory"]["restarts"] == 0
    workers = run["memory"]["workers"]
    assert len(workers) == 2 and all(w["peak_hwm"] >= w["baseline"] > 0 for w in workers.values())
    assert set(stages) == {"ingest", "embed", "dedup", "cluster", "sample"}
    assert all(row["seconds"] is not None and row["seconds"] >= 0 for row in stages.values())
    assert stages["dedup"]["images_in"] == 3000 and stages["dedup"]["images_out"] == 3000 - 30
    assert quality["planted_pairs"] == 30 and quality["planted_recall"] >= 0.95
    assert quality["largest_group"] == 2 and quality["removed_in_planted_pairs"] == quality["removed"]
    assert 0 < quality["selected"] <= 4 * 100  # lvd: sample.per_query=4 nearest of each query
    assert quality["selection_precision"] >= 0.9 > quality["base_rate"]
    assert quality["query_precision"] >= 0.9
    assert (tmp_path / "result.json").is_file()
    assert run["memory"]["busy_seconds"] and set(result["formula"]) >= {
        step for step in run["memory"]["steps"] if step.split()[0] in ("dedup", "cluster", "sample")} - {
        "dedup clean", "cluster clean", "sample clean"}


def test_at_a_fixed_cluster_count_only_two_steps_grow_with_the_pool_and_the_rest_with_the_partition():
    small, large = (task_bytes(Sizes(pool=pool, partition=100_000, clusters=1000)) for pool in (6_000_000, 24_000_000))
    assert {step for step in small if large[step] > 1.5 * small[step]} == {
        "dedup components", "dedup train"}  # union-find, the IVF sample (the radii: a bucket of clusters a task)
    halves = task_bytes(Sizes(pool=6_000_000, partition=50_000, clusters=1000))
    assert all(halves[step] < small[step] for step in ("dedup search", "dedup add", "cluster write", "sample scan"))
