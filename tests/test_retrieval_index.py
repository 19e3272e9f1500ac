"""faiss index: exact round trip through disk, IVF/HNSW recall against exact search, contact sheet."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dinolab.core.contact_sheet import contact_sheet
from dinolab.features.retrieval import FeatureIndex, RetrievalIndexError
from dinolab.features.retrieval.index import default_nlist


def _vectors(num: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(num, dim, generator=torch.Generator().manual_seed(seed))


def test_flat_round_trip_nearest_is_itself(tmp_path):
    vectors = _vectors(50, 16, 0)
    names = [f"img_{i}.png" for i in range(50)]
    FeatureIndex.build(vectors, names, {"weights": "w.pth"}).save(tmp_path / "idx")
    loaded = FeatureIndex.load(tmp_path / "idx")
    assert loaded.model_description == {"weights": "w.pth"} and len(loaded) == 50
    hits = loaded.search(vectors[[3, 17]] * 5.0, k=4)  # scale does not matter: cosine
    assert [h[0].name for h in hits] == ["img_3.png", "img_17.png"]
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-5)
    unit = torch.nn.functional.normalize(vectors, dim=1)
    expected = (unit[3] @ unit.T).topk(4)
    assert [h.position for h in hits[0]] == expected.indices.tolist()
    np.testing.assert_allclose([h.score for h in hits[0]], expected.values.numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_recall_against_exact(tmp_path, kind):
    # Clustered data, as embeddings are (IVF on structureless Gaussian noise needs many more probes).
    centres = _vectors(64, 32, 1)
    points = centres[torch.arange(4100) % 64] + 0.5 * _vectors(4100, 32, 2)
    gallery, queries = points[:4000], points[4000:]
    exact = FeatureIndex.build(gallery, [str(i) for i in range(4000)], kind="flat")
    approx = FeatureIndex.build(gallery, [str(i) for i in range(4000)], kind=kind)
    approx.save(tmp_path / kind)
    approx = FeatureIndex.load(tmp_path / kind)  # search parameters survive the round trip
    _, truth = exact.search_arrays(queries, 10)
    _, found = approx.search_arrays(queries, 10)
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])
    assert recall > 0.8, recall
    if kind == "ivf":
        assert approx.index.nlist == default_nlist(4000) == 102
        approx.set_search_parameters(nprobe=approx.index.nlist)  # visiting every list is exact
        assert np.array_equal(approx.search_arrays(queries, 10)[1], truth)


def test_bad_inputs_are_clear_errors(tmp_path):
    index = FeatureIndex.build(_vectors(5, 8, 0), list("abcde"))
    with pytest.raises(RetrievalIndexError, match="dimension 4"):
        index.search(_vectors(1, 4, 0), k=2)
    with pytest.raises(RetrievalIndexError, match="names"):
        FeatureIndex.build(_vectors(5, 8, 0), ["a"])
    with pytest.raises(RetrievalIndexError, match="not an index directory"):
        FeatureIndex.load(tmp_path)
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    meta["names"] = meta["names"][:2]
    (tmp_path / "idx" / "index.json").write_text(json.dumps(meta))
    with pytest.raises(RetrievalIndexError, match="lists 2 names"):
        FeatureIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(RetrievalIndexError, match="faiss"):
        FeatureIndex.load(tmp_path / "idx")


def test_contact_sheet_layout_and_pixels():
    red = Image.new("RGB", (40, 20), (255, 0, 0))  # wide: fitted to 100x50, centred vertically
    green, blue = Image.new("RGB", (30, 30), (0, 255, 0)), Image.new("L", (30, 30), 0)
    rows = [("red", red, [(green, "g.png", 0.9), (blue, "b.png", 0.5)]), ("green", green, [(red, "r", 0.1)])]
    sheet = contact_sheet([(img, name, hits) for name, img, hits in rows], tile=100, caption_height=30, margin=5)
    assert sheet.size == (3 * 110, 2 * 140)
    pixels = np.asarray(sheet)
    assert tuple(pixels[5 + 50, 5 + 50]) == (255, 0, 0)  # query tile centre
    assert tuple(pixels[5 + 10, 5 + 50]) == (255, 255, 255)  # letterbox above the wide image
    assert tuple(pixels[2, 50]) == (40, 90, 200)  # query frame
    assert tuple(pixels[55, 110 + 55]) == (0, 255, 0)  # first neighbour
    assert tuple(pixels[55, 220 + 55]) == (0, 0, 0)  # grayscale neighbour converted to RGB
    assert tuple(pixels[140 + 55, 220 + 55]) == (255, 255, 255)  # empty cell of the short row
    caption = pixels[5 + 100 + 5 : 140, 110:220]
    assert (caption < 128).any()  # score text was drawn
    with pytest.raises(ValueError):
        contact_sheet([])
