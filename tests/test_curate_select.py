"""Retrieval-based selection against a brute-force numpy reference and hand-built clusters."""

import numpy as np

from dinolab.curate.kmeans import ClusterTree
from dinolab.curate.sample import retrieve_from_clusters, retrieve_nearest, select_balanced


def _unit_rows(array: np.ndarray) -> np.ndarray:
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def test_nearest_matches_brute_force():
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((200, 12)).astype(np.float32)
    curated = rng.standard_normal((5, 12)).astype(np.float32)
    selection = retrieve_nearest(curated, pool, per_query=3, kind="flat")
    similarity = _unit_rows(curated) @ _unit_rows(pool).T
    expected = np.unique(np.argsort(-similarity, axis=1)[:, :3])
    np.testing.assert_array_equal(selection.pool_index, expected)
    # Each selected image records its most similar curated image and that similarity.
    best_query = np.argmax(similarity[:, expected], axis=0)
    np.testing.assert_array_equal(selection.query_index, best_query)
    np.testing.assert_allclose(selection.similarity, similarity[best_query, expected], atol=1e-5)


def test_min_similarity_drops_far_neighbours():
    pool = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], dtype=np.float32)
    curated = np.array([[1, 0]], dtype=np.float32)
    selection = retrieve_nearest(curated, pool, per_query=3, min_similarity=0.5, kind="flat")
    assert selection.pool_index.tolist() == [0, 1]


def _three_clusters():
    """Pool: cluster 0 near +x (rows 0-9), cluster 1 near +y (rows 10-19), cluster 2 near -x (rows 20-29);
    curated images 0 and 1 near +x, 2 near +y. Returns (directions, labels, pool, curated)."""
    rng = np.random.default_rng(1)
    directions = np.array([[1, 0, 0], [0, 1, 0], [-1, 0, 0]], dtype=np.float32)
    labels = np.repeat(np.arange(3), 10)
    pool = directions[labels] + 0.05 * rng.standard_normal((30, 3)).astype(np.float32)
    curated = np.array([[1, 0.1, 0], [0.9, -0.1, 0], [0, 1, 0.05]], dtype=np.float32)
    return directions, labels, pool, curated


def test_cluster_retrieval_samples_only_hit_clusters():
    directions, labels, pool, curated = _three_clusters()
    selection = retrieve_from_clusters(curated, pool, labels, directions, per_cluster=4, seed=0)
    # Cluster 0 is hit twice but sampled once: 4 images from cluster 0, 4 from cluster 1, none from 2.
    assert np.bincount(selection.cluster, minlength=3).tolist() == [4, 4, 0]
    assert set(selection.pool_index[selection.cluster == 0].tolist()) <= set(range(10))
    assert set(selection.query_index[selection.cluster == 1].tolist()) == {2}
    assert set(selection.query_index[selection.cluster == 0].tolist()) <= {0, 1}
    everything = retrieve_from_clusters(curated, pool, labels, directions, per_cluster=100, seed=0)
    assert everything.pool_index.tolist() == list(range(20))


def test_cluster_retrieval_min_hits_skips_clusters_few_curated_images_land_in():
    # Cluster 0 is the nearest cluster of two curated images, cluster 1 of one: min_hits=2 samples cluster 0 only.
    directions, labels, pool, curated = _three_clusters()
    by_hits = {hits: retrieve_from_clusters(curated, pool, labels, directions, per_cluster=100, min_hits=hits)
               for hits in (1, 2, 3)}
    assert np.unique(by_hits[1].cluster).tolist() == [0, 1]
    assert by_hits[2].pool_index.tolist() == list(range(10)) and set(by_hits[2].query_index.tolist()) <= {0, 1}
    assert len(by_hits[3]) == 0


def test_balanced_selection_records_clusters():
    labels = np.repeat(np.arange(4), [5, 5, 5, 5])
    tree = ClusterTree([np.zeros((4, 2), np.float32)], [labels])
    selection = select_balanced(tree, 8, seed=0)
    assert np.bincount(selection.cluster, minlength=4).tolist() == [2, 2, 2, 2]
    np.testing.assert_array_equal(selection.cluster, labels[selection.pool_index])


def test_selection_table_retrieves_for_curated_queries_or_samples_the_tree():
    import pyarrow as pa  # noqa: F401

    from dinolab.schemas.config import SampleConfig
    from dinolab.schemas.tables import validate
    from dinolab.curate.sample import selection_table

    rng = np.random.default_rng(3)
    pool = rng.standard_normal((60, 8)).astype(np.float32)
    keys = [f"p{i:03d}" for i in range(60)]
    levels = np.stack([np.arange(60) % 6, np.arange(60) % 2], axis=1)
    curated = pool[[5, 17]] + 0.01
    table = selection_table(keys, keys, pool, levels, ["q0", "q1"], curated, SampleConfig(per_query=3))
    validate(table, "selection")
    rows = table.to_pylist()
    assert {r["key"] for r in rows} >= {"p005", "p017"} and len(rows) <= 6
    assert {r["query_key"] for r in rows} == {"q0", "q1"} and {r["method"] for r in rows} == {"retrieval:neighbours"}
    assert next(r for r in rows if r["key"] == "p005")["query_key"] == "q0"
    assert all(r["cluster"] == int(r["key"][1:]) % 6 for r in rows)
    balanced = selection_table(keys, keys, pool, levels, [], np.zeros((0, 8), np.float32), SampleConfig(target=12))
    assert len(balanced) == 12 and set(balanced.column("method").to_pylist()) == {"balanced"}
    assert sorted(np.bincount(balanced.column("cluster").to_numpy(), minlength=6)) == [2] * 6  # even over clusters
    # sample.min_cluster_hits reaches cluster-based retrieval: two queries land in cluster 5, one in cluster 0.
    queries = pool[[5, 5, 0]] + np.array([[0.0], [0.01], [0.0]], dtype=np.float32)
    config = SampleConfig(retrieval="clusters", per_cluster=100)
    hit_once = selection_table(keys, keys, pool, levels, ["q0", "q1", "q2"], queries, config)
    hit_twice = selection_table(keys, keys, pool, levels, ["q0", "q1", "q2"], queries,
                                SampleConfig(retrieval="clusters", per_cluster=100, min_cluster_hits=2))
    assert set(hit_once.column("cluster").to_pylist()) == {0, 5}
    assert set(hit_twice.column("cluster").to_pylist()) == {5} and len(hit_twice) == 10
    everything = selection_table(keys, keys, pool, levels, [], np.zeros((0, 8), np.float32), SampleConfig(method="all"))
    assert everything.column("key").to_pylist() == keys
