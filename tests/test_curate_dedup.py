"""Copy detection: planted pairs, connected components, keep rules and leakage removal."""

import numpy as np
import pytest

from curate.dedup import (
    DuplicatePairs,
    connected_components,
    deduplicate,
    keep_one_per_component,
    near_duplicate_pairs,
)


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


def test_deduplicate_keeps_first_name_and_removes_leaks(planted):
    embeddings, names = planted
    evaluation = np.stack([_unit(1, 4), _unit(45, 2)])  # first copies row 6; second matches nothing
    result = deduplicate(
        embeddings, names, threshold=0.99, k=4, kind="flat",
        against={"eval": (evaluation, ["ev0.png", "ev1.png"])},
    )
    # Group {e, a, f}: a.png sorts first and stays; group {c, d}: c.png stays; g.png leaks into eval.
    assert result.keep.tolist() == [False, True, True, True, False, False, False]
    reasons = {(names[r.index], r.reason, r.matched) for r in result.removals}
    assert reasons == {
        ("e.png", "duplicate", "a.png"),
        ("f.png", "duplicate", "a.png"),
        ("d.png", "duplicate", "c.png"),
        ("g.png", "leak:eval", "ev0.png"),
    }
    leak = next(r for r in result.removals if r.reason == "leak:eval")
    assert leak.similarity == pytest.approx(np.cos(np.deg2rad(1)), abs=1e-5)


def test_centering_separates_features_with_a_shared_offset():
    rng = np.random.default_rng(0)
    distinct = rng.standard_normal((20, 8)).astype(np.float32)
    offset = np.full(8, 50.0, dtype=np.float32)  # every cosine is near 1 before centring
    embeddings = distinct + offset
    embeddings[19] = embeddings[3] + 0.01
    names = [f"{i:02d}.png" for i in range(20)]
    raw = deduplicate(embeddings, names, threshold=0.99, k=8, kind="flat")
    centred = deduplicate(embeddings, names, threshold=0.99, k=8, kind="flat", center=True)
    assert raw.keep.sum() < 5
    assert np.flatnonzero(~centred.keep).tolist() == [19]
