"""Copy detection: planted pairs, connected components, keep rules and leakage removal."""

import numpy as np
import pytest

import pyarrow as pa

from dinolab.curate.dedup import (
    DuplicatePairs,
    connected_components,
    duplicates_table,
    keep_one_per_component,
    near_duplicate_pairs,
)
from dinolab.schemas.config import DedupConfig
from dinolab.schemas.tables import validate


def _unit(angle_degrees: float, axis: int = 0, dim: int = 6) -> np.ndarray:
    """A unit vector at ``angle_degrees`` from basis vector ``axis`` towards ``axis + 1``."""
    vector = np.zeros(dim, dtype=np.float32)
    radians = np.deg2rad(angle_degrees)
    vector[axis], vector[axis + 1] = np.cos(radians), np.sin(radians)
    return vector


@pytest.fixture
def planted():
    # Rows 0, 3, 5 lie within 5 degrees of axis 0 (cos 5deg = 0.9962); row 1 is 40 degrees away;
    # rows 2 and 4 are one copy pair near axis 2; row 6 is alone near axis 4 (scaled: cosine ignores norm).
    rows = [_unit(0), _unit(40), _unit(0, 2), _unit(3), _unit(2, 2) * 5, _unit(5), _unit(0, 4)]
    names = ["e.png", "b.png", "c.png", "a.png", "d.png", "f.png", "g.png"]
    return np.stack(rows), names


def test_pairs_are_exactly_the_planted_ones(planted):
    embeddings, _ = planted
    pairs = near_duplicate_pairs(embeddings, threshold=0.99, k=4, kind="flat")
    assert list(zip(pairs.first.tolist(), pairs.second.tolist())) == [(0, 3), (0, 5), (2, 4), (3, 5)]
    expected = [np.cos(np.deg2rad(d)) for d in (3, 5, 2, 2)]
    np.testing.assert_allclose(pairs.similarity, expected, atol=1e-5)


def test_threshold_between_similarities_splits_pairs(planted):
    embeddings, _ = planted
    pairs = near_duplicate_pairs(embeddings, threshold=np.cos(np.deg2rad(4)), k=4, kind="flat")
    assert list(zip(pairs.first.tolist(), pairs.second.tolist())) == [(0, 3), (2, 4), (3, 5)]


def test_approximate_indexes_agree_on_a_small_set(planted):
    embeddings, _ = planted
    exact = near_duplicate_pairs(embeddings, 0.99, k=4, kind="flat")
    for kind in ("ivf", "hnsw"):
        approximate = near_duplicate_pairs(embeddings, 0.99, k=4, kind=kind)
        np.testing.assert_array_equal(approximate.first, exact.first)
        np.testing.assert_array_equal(approximate.second, exact.second)


def test_components_are_transitive_and_numbered_in_row_order():
    pairs = DuplicatePairs(np.array([1, 4, 2]), np.array([4, 6, 5]), np.ones(3, dtype=np.float32))
    labels = connected_components(7, pairs)
    assert labels.tolist() == [0, 1, 2, 3, 1, 2, 1]


def test_keep_rule_first_name_and_highest_resolution():
    labels = np.array([0, 0, 0, 1, 1, 2])
    names = ["z.png", "b.png", "m.png", "y.png", "x.png", "q.png"]
    assert keep_one_per_component(labels, names, "first").tolist() == [0, 1, 0, 0, 1, 1]
    pixels = np.array([100, 50, 100, 10, 20, 5])
    # Ties on pixel count (z and m) fall back to the name: m.png sorts before z.png.
    keep = keep_one_per_component(labels, names, "resolution", pixels)
    assert keep.tolist() == [0, 0, 1, 0, 1, 1]


def _pool(names, sizes=None, digests=None) -> pa.Table:
    count = len(names)
    sizes = sizes or [(10, 10)] * count
    return pa.table({
        "key": [n.replace(".png", "") for n in names], "uri": [f"/lake/{n}" for n in names],
        "sha256": digests or [f"h{i}" for i in range(count)],
        "width": [w for w, _ in sizes], "height": [h for _, h in sizes],
    })


def test_duplicates_table_groups_keeps_one_and_removes_leaking_groups_whole(planted):
    embeddings, names = planted
    evaluation = np.stack([_unit(1, 4), _unit(45, 2)])  # first copies row 6 (g); second matches nothing
    sizes = [(10, 10)] * 7
    sizes[names.index("f.png")] = (20, 20)  # the largest image of {e, a, f} is kept, not the first key
    table = duplicates_table(_pool(names, sizes), embeddings, {"eval": evaluation},
                             DedupConfig(k=4, threshold=0.99, eval_threshold=0.99, index="flat"))
    validate(table, "duplicates")
    rows = {row["key"]: row for row in table.to_pylist()}
    assert list(rows) == sorted(rows)  # key order
    assert {k for k, r in rows.items() if r["kept"]} == {"b", "c", "f"}
    assert rows["a"]["kept_key"] == rows["e"]["kept_key"] == "f" and rows["a"]["group"] == rows["f"]["group"]
    assert rows["a"]["reason"] == rows["e"]["reason"] == "copy" and rows["d"]["reason"] == "copy"
    assert rows["g"] == {**rows["g"], "kept": False, "reason": "leak:eval", "kept_key": "g"}
    assert rows["b"]["group"] != rows["c"]["group"] and rows["b"]["reason"] is None
    assert rows["a"]["similarity"] == pytest.approx(np.cos(np.deg2rad(2)), abs=1e-5)  # a at 3°, f at 5°


def test_byte_identical_files_are_exact_duplicates_even_when_their_vectors_differ():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((4, 8)).astype(np.float32)
    names = ["a.png", "b.png", "c.png", "d.png"]
    table = duplicates_table(_pool(names, digests=["x", "y", "x", "z"]), vectors, {},
                             DedupConfig(k=3, threshold=0.999, index="flat"))
    rows = {row["key"]: row for row in table.to_pylist()}
    assert rows["c"]["reason"] == "exact" and rows["c"]["kept_key"] == "a" and not rows["c"]["kept"]
    assert [r["kept"] for r in rows.values()] == [True, True, False, True]


def test_a_leak_removes_the_whole_group_it_touches(planted):
    embeddings, names = planted
    evaluation = _unit(4, 0)[None]  # near f (5 degrees) only at the loose threshold, not e or a
    table = duplicates_table(_pool(names), embeddings, {"test": evaluation},
                             DedupConfig(k=4, threshold=0.99, eval_threshold=0.9995, index="flat"))
    rows = {row["key"]: row for row in table.to_pylist()}
    assert {k for k, r in rows.items() if r["reason"] == "leak:test"} == {"a", "e", "f"}


def test_centering_separates_features_with_a_shared_offset():
    rng = np.random.default_rng(0)
    distinct = rng.standard_normal((20, 8)).astype(np.float32)
    offset = np.full(8, 50.0, dtype=np.float32)  # every cosine is near 1 before centring
    embeddings = distinct + offset
    embeddings[19] = embeddings[3] + 0.01
    pool = _pool([f"{i:02d}.png" for i in range(20)])
    raw = duplicates_table(pool, embeddings, {}, DedupConfig(k=8, threshold=0.99, index="flat"))
    centred = duplicates_table(pool, embeddings, {}, DedupConfig(k=8, threshold=0.99, index="flat", center=True))
    assert sum(raw.column("kept").to_pylist()) < 5
    assert [row["key"] for row in centred.to_pylist() if not row["kept"]] == ["19"]
