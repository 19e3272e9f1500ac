"""Hierarchical k-means shapes and label composition, water-filling allocation, balanced sampling."""

import numpy as np

from dinolab.curate.kmeans import (
    ClusterTree,
    allocate_evenly,
    balanced_sample,
    clusters_table,
    default_ks,
    hierarchical_kmeans,
    members,
    tree_from_levels,
)
from dinolab.schemas.config import ClusterConfig
from dinolab.schemas.tables import validate


def _blobs(centres: int, per_centre: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centres, dim)).astype(np.float32) * 5
    labels = np.repeat(np.arange(centres), per_centre)
    return means[labels] + 0.1 * rng.standard_normal((len(labels), dim)).astype(np.float32), labels


def test_levels_have_requested_shapes_and_compose():
    points, _ = _blobs(12, 20)
    tree = hierarchical_kmeans(points, ks=[12, 4, 2], niter=10, resampling_steps=1, seed=0)
    assert [c.shape for c in tree.centroids] == [(12, 16), (4, 16), (2, 16)]
    assert [p.shape for p in tree.parents] == [(240,), (12,), (4,)]
    assert tree.labels(3).tolist() == tree.parents[2][tree.parents[1][tree.parents[0]]].tolist()
    assert tree.sizes(1).sum() == tree.sizes(2).sum() == tree.sizes(3).sum() == 240


def test_well_separated_blobs_are_recovered_at_level_one():
    points, truth = _blobs(6, 30)
    labels = hierarchical_kmeans(points, ks=[6, 2], niter=20, seed=1).labels(1)
    # Every true blob maps to a single cluster and every cluster to a single blob.
    pairs = set(zip(truth.tolist(), labels.tolist()))
    assert len(pairs) == 6 and len({b for _, b in pairs}) == 6


def test_k_is_capped_by_the_number_of_items():
    points, _ = _blobs(3, 2)
    tree = hierarchical_kmeans(points, ks=[4, 10], niter=5)
    assert [len(c) for c in tree.centroids] == [4, 4]


def test_default_ks_shrink_per_level():
    assert default_ks(100_000, 4) == [2000, 200, 40, 8]
    assert default_ks(30, 3) == [1, 1, 1]


def test_allocate_evenly_waterfills_small_bins():
    rng = np.random.default_rng(0)
    # 10 over bins of capacity 1, 2, 100: the small bins are filled, the rest goes to the big one.
    assert allocate_evenly(np.array([1, 2, 100]), 10, rng).tolist() == [1, 2, 7]
    assert allocate_evenly(np.array([5, 5, 5]), 9, rng).tolist() == [3, 3, 3]
    assert allocate_evenly(np.array([2, 3]), 50, rng).tolist() == [2, 3]
    remainder = allocate_evenly(np.array([9, 9, 9, 9]), 6, rng)
    assert sorted(remainder.tolist()) == [1, 1, 2, 2]


def test_balanced_sample_counts_by_hand():
    # 8 level-1 clusters of sizes 50, 50, 2, 100, 1, 1, 1, 300 under 2 top clusters:
    # top 0 = {0, 1, 2, 3} (202 images), top 1 = {4, 5, 6, 7} (303 images).
    sizes = [50, 50, 2, 100, 1, 1, 1, 300]
    labels = np.repeat(np.arange(8), sizes)
    tree = ClusterTree(
        centroids=[np.zeros((8, 2), np.float32), np.zeros((2, 2), np.float32)],
        parents=[labels, np.array([0, 0, 0, 0, 1, 1, 1, 1])],
    )
    chosen = balanced_sample(tree, count=40, seed=0)
    assert len(chosen) == len(set(chosen.tolist())) == 40
    # 20 per top cluster; top 0: 2 for cluster 2, the other 18 split 6/6/6;
    # top 1: clusters 4-6 give 1 each, cluster 7 takes the remaining 17.
    assert np.bincount(labels[chosen], minlength=8).tolist() == [6, 6, 2, 6, 1, 1, 1, 17]


def test_balanced_sample_is_reproducible_and_bounded():
    points, _ = _blobs(8, 25)
    tree = hierarchical_kmeans(points, ks=[8, 2], niter=10, seed=0)
    first = balanced_sample(tree, 50, seed=3)
    np.testing.assert_array_equal(first, balanced_sample(tree, 50, seed=3))
    assert len(balanced_sample(tree, 10_000, seed=0)) == 200  # at most every image


def test_clusters_table_describes_the_tree_and_rebuilds_it():
    """The clusters table keeps every level's label; the tree rebuilt from it samples like the original."""
    points, _ = _blobs(6, 20)
    keys = [f"k{i:03d}" for i in range(len(points))]
    table = clusters_table(keys, keys, points, ClusterConfig(ks=(6, 2), niter=5))
    validate(table, "clusters")
    tree = hierarchical_kmeans(points, ks=[6, 2], niter=5)
    levels = np.array(table.column("levels").to_pylist())
    np.testing.assert_array_equal(levels[:, 0], tree.labels(1))
    np.testing.assert_array_equal(levels[:, 1], tree.labels(2))
    np.testing.assert_array_equal(table.column("cluster").to_numpy(), tree.labels(1))
    rebuilt = tree_from_levels(levels)
    for level in (1, 2):
        np.testing.assert_array_equal(rebuilt.labels(level), tree.labels(level))
        np.testing.assert_array_equal(rebuilt.sizes(level), tree.sizes(level))
    np.testing.assert_array_equal(balanced_sample(rebuilt, 30, seed=1), balanced_sample(tree, 30, seed=1))


def test_members_lists_each_label_in_ascending_order():
    found = members(np.array([2, 0, 2, 1, 0]), 4)
    assert [m.tolist() for m in found] == [[1, 4], [3], [0, 2], []]
