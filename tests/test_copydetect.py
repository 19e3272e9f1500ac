"""Copy detection building blocks: hashes, SSCD layout, GeM, score normalisation, verification, groups, leaks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torchvision
from PIL import Image, ImageOps

from dinolab.curate.copydetect import hashes
from dinolab.curate.copydetect.augment import draw_text, jpeg, paste_emoji
from dinolab.curate.copydetect.descriptor import SSCD, CheckpointError, GeM, load_descriptor
from dinolab.curate.copydetect.features import image_features
from dinolab.curate.copydetect.groups import UnionFind, keep_largest, leaking_rows, structural_links, structural_similarity
from dinolab.curate.copydetect.local import describe
from dinolab.curate.copydetect.pipeline import ReferenceSet, copy_duplicates_table
from dinolab.curate.copydetect.score_norm import background_bias, with_bias
from dinolab.curate.copydetect.verify import VerifyConfig, cell_correlation, verify_aligned, verify_pair
from dinolab.schemas.config import DedupConfig
from dinolab.schemas.tables import validate


def _photo(name: str, size: int = 256) -> Image.Image:
    import skimage.data

    return ImageOps.fit(Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB"), (size, size))


# -- hashes -----------------------------------------------------------------------------------------


def test_hash_pairs_need_every_hash_within_the_radius():
    rng = np.random.default_rng(0)
    codes = {name: rng.integers(0, 256, (6, 8), dtype=np.uint8) for name in ("phash", "dhash")}
    codes["phash"][3] = codes["phash"][1] ^ np.array([1, 0, 0, 0, 0, 0, 0, 3], np.uint8)  # 3 bits
    codes["dhash"][3] = codes["dhash"][1] ^ np.array([7, 0, 0, 0, 0, 0, 0, 0], np.uint8)  # 3 bits
    codes["phash"][5] = codes["phash"][0]  # pHash equal, dHash unrelated: not a pair
    first, second, distance = hashes.hash_pairs(codes, max_distance=3)
    assert list(zip(first.tolist(), second.tolist(), distance.tolist())) == [(1, 3, 3)]
    assert len(hashes.hash_pairs(codes, max_distance=2)[0]) == 0


def test_multi_index_hashing_finds_the_same_pairs_as_the_flat_binary_index(monkeypatch):
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (400, 8), dtype=np.uint8)
    flips = rng.integers(0, 64, (100, 3))
    for row, bits in enumerate(flips):  # rows 300.. are rows 0..99 with 3 bits flipped
        code = np.unpackbits(codes[row]).copy()
        code[bits] ^= 1
        codes[300 + row] = np.packbits(code)
    flat = hashes.radius_pairs(codes, 3)
    monkeypatch.setattr(hashes, "MULTI_HASH_ABOVE", 10)
    assert isinstance(hashes.binary_index(codes), __import__("faiss").IndexBinaryMultiHash)
    multi = hashes.radius_pairs(codes, 3)
    assert sorted(zip(*map(np.ndarray.tolist, flat[:2]))) == sorted(zip(*map(np.ndarray.tolist, multi[:2])))
    assert {(r, 300 + r) for r in range(100)} <= set(zip(*map(np.ndarray.tolist, flat[:2])))


# -- descriptor -------------------------------------------------------------------------------------


def test_gem_with_p3_is_the_cube_root_of_the_mean_cube():
    x = torch.rand(2, 5, 3, 4)
    expected = (x.pow(3).mean(dim=(2, 3))).pow(1 / 3)
    torch.testing.assert_close(GeM(3.0)(x), expected)
    assert not torch.allclose(GeM(3.0)(x), x.mean(dim=(2, 3)))


def test_sscd_loads_a_torchvision_layout_state_dict_with_random_weights(tmp_path):
    torch.manual_seed(0)
    released = torchvision.models.resnet50(num_classes=512)  # the released files' layout: fc is the projection
    path = tmp_path / "sscd_disc_mixup.torchvision.pt"
    torch.save(released.state_dict(), path)
    model = load_descriptor(path)
    assert isinstance(model, SSCD) and isinstance(model.backbone.avgpool, GeM) and model.dim == 512
    torch.testing.assert_close(model.backbone.fc.weight, released.fc.weight)
    prefixed = tmp_path / "prefixed.pt"
    torch.save({f"backbone.{k}": v for k, v in released.state_dict().items()}, prefixed)
    torch.testing.assert_close(load_descriptor(prefixed).backbone.layer4[2].conv3.weight, released.layer4[2].conv3.weight)
    with torch.inference_mode():
        out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 512)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    broken = tmp_path / "broken.pt"
    state = released.state_dict()
    state.pop("layer1.0.conv1.weight")
    torch.save(state, broken)
    with pytest.raises(CheckpointError, match="missing"):
        load_descriptor(broken)


def test_torchscript_is_refused_unless_accepted(tmp_path):
    model = SSCD("resnet18", dim=32).eval()
    path = tmp_path / "model.torchscript.pt"
    torch.jit.trace(model, torch.rand(1, 3, 32, 32)).save(str(path))
    with pytest.raises(CheckpointError, match="allow_torchscript"):
        load_descriptor(path)
    loaded = load_descriptor(path, allow_torchscript=True)
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x))


# -- score normalisation ----------------------------------------------------------------------------


def test_score_normalisation_as_an_extra_dimension_matches_numpy():
    rng = np.random.default_rng(0)
    unit = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    queries, references, background = unit(rng.normal(size=(7, 16))), unit(rng.normal(size=(9, 16))), unit(rng.normal(size=(50, 16)))
    bias = background_bias(queries, background, first=1, last=3, beta=1.0)
    similarities = queries @ background.T
    expected_bias = np.sort(similarities, axis=1)[:, ::-1][:, 0:3].mean(axis=1)
    np.testing.assert_allclose(bias, expected_bias, atol=1e-5)
    scores = with_bias(queries, bias) @ with_bias(references, None).T
    np.testing.assert_allclose(scores, queries @ references.T - expected_bias[:, None], atol=1e-5)
    second_to_fourth = background_bias(queries, background, first=2, last=4, beta=0.5)
    np.testing.assert_allclose(second_to_fourth, 0.5 * np.sort(similarities, axis=1)[:, ::-1][:, 1:4].mean(axis=1), atol=1e-5)
    own = background_bias(background[:5], background, exclude_self=True)
    np.testing.assert_allclose(own, np.sort(background[:5] @ background.T, axis=1)[:, ::-1][:, 1:4].mean(axis=1), atol=1e-5)


# -- verification -----------------------------------------------------------------------------------


def _frame(photo: Image.Image) -> Image.Image:
    """A textured 'screenshot' frame (the same for every photo) with ``photo`` inside."""
    frame = _photo("page", 320).resize((320, 320))
    frame.paste(photo.resize((200, 200)), (100, 60))
    return frame


def test_verification_accepts_a_copy_and_rejects_photos_sharing_only_an_overlay_or_a_frame():
    astronaut, coffee = _photo("astronaut"), _photo("coffee")
    crop = astronaut.crop((40, 30, 230, 220)).rotate(12, resample=Image.Resampling.BICUBIC)
    copy = verify_pair(describe(astronaut), describe(ImageOps.mirror(crop)))
    assert copy.accepted and copy.agreement > 0.7  # a full affine map may include the reflection
    emoji = [paste_emoji(p, "\U0001F600", 0.4, 1.0, (0.5, 0.5)) for p in (astronaut, coffee)]
    assert not verify_pair(describe(emoji[0]), describe(emoji[1])).accepted
    texts = [draw_text(p, "so true", 0.2, 1.0, (0.5, 0.9), (255, 255, 255)) for p in (astronaut, coffee)]
    assert not verify_pair(describe(texts[0]), describe(texts[1])).accepted
    framed = describe(_frame(astronaut)), describe(_frame(coffee))
    shared_frame = verify_pair(*framed)
    assert shared_frame.inliers >= 8 and not shared_frame.accepted  # matched, but only on the frame
    assert verify_pair(describe(astronaut), framed[0]).accepted


def test_aligned_verification_accepts_a_flat_photo_recoloured_and_rejects_another_photo_in_the_same_frame():
    import skimage.data

    flat = Image.fromarray(skimage.data.moon()).convert("RGB").resize((256, 256))
    reencoded = jpeg(flat.resize((180, 180)), 20)  # resized + re-encoded: the same framing
    assert verify_aligned(describe(flat), describe(reencoded)).accepted
    framed = describe(_frame(_photo("astronaut"))), describe(_frame(_photo("coffee")))
    assert not verify_aligned(*framed).accepted  # the frame agrees, the photos are one big disagreeing block


def test_a_striped_copy_is_verified_on_the_pixels_its_stripes_leave_visible():
    photo = _photo("astronaut")
    striped = np.asarray(photo).copy()
    striped[np.arange(256) % 24 < 6] = (200, 40, 90)  # solid bands across a quarter of the rows
    copy = Image.fromarray(striped)
    result = verify_pair(describe(photo), describe(copy))
    assert result.accepted
    stiff = verify_pair(describe(photo), describe(copy), VerifyConfig(max_occluded=0.0))  # whole cells only
    assert result.agreement > stiff.agreement


def test_a_copy_mostly_hidden_by_stripes_is_verified_on_its_geometry_and_a_shared_frame_still_is_not():
    photo = _photo("astronaut")
    striped = np.asarray(photo).copy()
    striped[np.arange(256) % 48 < 28] = (200, 40, 90)  # solid bands over more than half of the rows
    pair = describe(photo), describe(Image.fromarray(striped))
    geometric = VerifyConfig(min_agreement=0.5, geometric_inliers=40)
    plain = verify_pair(*pair, VerifyConfig(min_agreement=0.5))
    assert not plain.accepted and plain.inliers >= 40 and 0.3 <= plain.agreement < 0.5
    assert verify_pair(*pair, geometric).accepted
    framed = verify_pair(describe(_frame(_photo("astronaut"))), describe(_frame(_photo("coffee"))), geometric)
    assert framed.inliers >= 40 and not framed.accepted  # the frame matches, the photos are one big block


def test_cell_correlation_ignores_the_occluded_pixels():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 256)), rng.normal(size=(3, 256))
    b[:, :192] = a[:, :192] * 2 + 5  # the visible part agrees (up to gain and offset)
    weight = np.ones_like(a)
    weight[:, 192:] = 0
    correlation, _, _ = cell_correlation(a, b, weight)
    assert np.allclose(correlation, 1.0, atol=1e-4)
    plain, std_a, _ = cell_correlation(a, b, np.ones_like(a))
    assert np.allclose(plain, [np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)], atol=1e-4)
    assert np.allclose(std_a, a.std(axis=1), atol=1e-4)


def test_flat_pictures_sharing_a_small_emblem_need_evidence_from_their_content():
    """Two flat fields of different colours with the same small emblem agree on every textured cell (the
    emblem), but on too few of them: no copy. Without the evidence rule they would be one."""
    def emblem(field: tuple, ink: tuple, side: int) -> Image.Image:
        image = Image.new("RGB", (side, side), field)
        mark = _photo("coins", side // 3)
        image.paste(mark, (side // 3, side // 3))
        return image

    a, b = describe(emblem((230, 200, 180), (0, 0, 0), 300)), describe(emblem((180, 230, 250), (0, 0, 0), 260))
    loose = verify_aligned(a, b, VerifyConfig(min_evidence=0, min_agreement=0.5))
    assert loose.accepted and loose.agreement > 0.8
    assert not verify_aligned(a, b, VerifyConfig(min_agreement=0.5)).accepted


def test_the_evidence_required_shrinks_with_the_template_share_of_the_pair():
    from dinolab.curate.copydetect.verify import required_evidence

    plain = describe(_photo("astronaut"))
    framed = describe(_photo("coffee"))
    framed.template = np.zeros((32, 32), bool)
    framed.template[:, :8] = True  # a quarter of the picture is lake template
    config = VerifyConfig(min_evidence=40)
    assert required_evidence(plain, plain, config) == 40
    assert required_evidence(plain, framed, config) == required_evidence(framed, plain, config) == 30


# -- groups -----------------------------------------------------------------------------------------


def test_structural_similarity_is_the_shared_closed_neighbourhood_over_the_geometric_mean():
    # two 4-cliques {0,1,2,3} and {4,5,6,7} joined by the one link 3-4, and a leaf 8 on row 0
    clique = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    edges = np.array(clique + [(a + 4, b + 4) for a, b in clique] + [(3, 4), (0, 8)])
    similarity = structural_similarity(edges[:, 0], edges[:, 1], 9)
    by_edge = dict(zip(map(tuple, edges.tolist()), similarity.tolist()))
    assert by_edge[(1, 2)] == pytest.approx(1.0)  # N[1] = N[2] = {0, 1, 2, 3}
    assert by_edge[(3, 4)] == pytest.approx(2 / 5)  # N[3] = {0..4}, N[4] = {3..7}: only 3 and 4 shared
    assert by_edge[(0, 8)] == pytest.approx(2 / np.sqrt(5 * 2))  # N[0] = {0, 1, 2, 3, 8}, N[8] = {0, 8}
    assert by_edge[(0, 1)] == pytest.approx(4 / np.sqrt(5 * 4))
    keep = structural_links(edges[:, 0], edges[:, 1], 9, min_similarity=0.5)
    dropped = {tuple(e) for e, k in zip(edges.tolist(), keep) if not k}
    assert dropped == {(3, 4)}  # the bridge goes; the leaf (one link only) stays
    assert structural_links(edges[:, 0], edges[:, 1], 9, min_similarity=0).all()


def test_union_find_joins_chains_and_labels_by_smallest_row():
    uf = UnionFind(7)
    uf.union(np.array([5, 1, 3]), np.array([6, 4, 6]))
    assert uf.labels().tolist() == [0, 1, 2, 3, 1, 3, 3]
    uf.union(np.array([4]), np.array([5]))
    assert uf.labels().tolist() == [0, 1, 2, 1, 1, 1, 1]


def test_keep_rule_is_largest_resolution_then_key():
    labels = np.array([0, 0, 0, 3, 3])
    keys = ["c", "a", "b", "e", "d"]
    assert keep_largest(labels, keys, np.array([10, 5, 10, 1, 1])).tolist() == [False, False, True, False, True]
    assert leaking_rows(labels, np.array([4])).tolist() == [False, False, False, True, True]


def _table(images: dict[str, Image.Image]) -> tuple[pa.Table, list]:
    digests = [hashlib.sha256(np.asarray(im).tobytes()).hexdigest() for im in images.values()]
    table = pa.table({"key": list(images), "uri": [f"/lake/{k}.jpg" for k in images], "sha256": digests,
                      "width": [im.width for im in images.values()], "height": [im.height for im in images.values()]})
    return table, [image_features(im) for im in images.values()]


def test_groups_keep_the_largest_copy_and_leaks_remove_the_whole_group_at_the_looser_threshold():
    astronaut, coffee, chelsea, rocket = (_photo(n) for n in ("astronaut", "coffee", "chelsea", "rocket"))
    pool = {
        "a1": astronaut, "a2": astronaut.resize((128, 128)),  # resized copy: a hash link, not kept (smaller)
        "a3": ImageOps.mirror(astronaut.crop((0, 0, 200, 200))),  # flipped crop: a verified copy
        "c1": coffee,
        "k1": chelsea.crop((20, 20, 236, 236)), "k2": ImageOps.grayscale(chelsea.crop((20, 20, 236, 236))).convert("RGB"),
        "r1": rocket,
    }
    table, features = _table(pool)
    evaluation = ReferenceSet([image_features(chelsea)], ["not-in-pool"])
    result = copy_duplicates_table(table, features, {"test": evaluation}, DedupConfig())
    validate(result, "duplicates")
    rows = {row["key"]: row for row in result.to_pylist()}
    assert rows["a1"]["kept"] and rows["a2"]["reason"] == "near" and rows["a3"]["reason"] == "copy"
    assert rows["a2"]["kept_key"] == rows["a3"]["kept_key"] == "a1"
    assert rows["k1"]["reason"] == rows["k2"]["reason"] == "leak:test"  # the whole group, not only k1
    assert rows["c1"]["kept"] and rows["r1"]["kept"] and rows["c1"]["group"] != rows["r1"]["group"]
    strict = copy_duplicates_table(table, features, {"test": evaluation},
                                   DedupConfig(eval_min_agreement=1.01, geometric_inliers=0))  # no leak can pass
    assert not any((r["reason"] or "").startswith("leak") for r in strict.to_pylist())


def test_knn_candidates_drop_self_pairs_and_keep_each_pair_once():
    from dinolab.curate.copydetect.candidates import knn_candidates

    vectors = np.eye(4, dtype=np.float32)
    vectors[3] = vectors[1] * 0.8 + vectors[2] * 0.6
    first, second, score = knn_candidates(vectors, k=3, threshold=0.5)
    assert list(zip(first.tolist(), second.tolist())) == [(1, 3), (2, 3)]
    np.testing.assert_allclose(score, [0.8, 0.6], atol=1e-6)


def test_a_score_normalised_self_search_scores_from_the_queries_with_their_bias():
    """The pool against itself with score normalisation: the queries carry ``-bias``, the database ``1``; the
    scores are ``similarity - bias``, not the plain similarity plus one."""
    from dinolab.curate.copydetect.candidates import knn_candidates

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(12, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    bias = background_bias(vectors, vectors, exclude_self=True)
    first, second, score = knn_candidates(with_bias(vectors, None), 4, -10.0, with_bias(vectors, bias), same_set=True)
    similarity = (vectors @ vectors.T)[first, second]
    assert len(first) == len(set(zip(first.tolist(), second.tolist()))) > 0
    # each unordered pair once, scored from one of its two rows as the query
    assert np.all(np.isclose(score, similarity - bias[first], atol=1e-5)
                  | np.isclose(score, similarity - bias[second], atol=1e-5))


def test_one_false_verified_link_does_not_merge_two_groups_of_copies(monkeypatch):
    """Two groups of 7 copies and one fooled verification between them: the bridge's structural
    similarity is 2 / 8 (only its own two ends shared), under the default 0.3, so it is dropped."""
    from dinolab.curate.copydetect import pipeline
    from dinolab.curate.copydetect.verify import Verification

    pool = {}
    for name in ("astronaut", "coffee"):
        photo = _photo(name)
        pool |= {f"{name}-0": photo, f"{name}-1": ImageOps.mirror(photo.crop((10, 10, 240, 240))),
                 f"{name}-2": photo.rotate(8, resample=Image.Resampling.BICUBIC), f"{name}-3": jpeg(photo, 15),
                 f"{name}-4": photo.resize((200, 200)), f"{name}-5": ImageOps.grayscale(photo).convert("RGB"),
                 f"{name}-6": photo.crop((0, 30, 256, 226))}
    table, features = _table(pool)
    keys = list(pool)
    bridge = {id(features[keys.index("astronaut-3")].local), id(features[keys.index("coffee-3")].local)}
    real = pipeline.verify_pair

    def fooled(a, b, config):  # a verification fooled once, as a shared frame fools it
        return Verification(True, 50, 0.9, 100) if {id(a), id(b)} == bridge else real(a, b, config)

    monkeypatch.setattr(pipeline, "verify_pair", fooled)
    count = len(keys)
    every = np.array([(a, b) for a in range(count) for b in range(a + 1, count)])
    monkeypatch.setattr(pipeline, "vote_candidates", lambda *args, **kwargs: (every[:, 0], every[:, 1], every[:, 0]))
    for min_structural, groups in ((0.3, 2), (0.0, 1)):
        rows = copy_duplicates_table(table, features, {}, DedupConfig(min_structural=min_structural)).to_pylist()
        assert len({row["group"] for row in rows}) == groups


def test_whitening_learned_on_a_sample_decorrelates_it():
    from dinolab.curate.copydetect.descriptor import Whitening

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6)) + 3.0
    whiten = Whitening.fit_sample(vectors, 300, seed=1)
    projected = (vectors - whiten.mean) @ whiten.projection
    np.testing.assert_allclose(np.cov(projected, rowvar=False), np.eye(6), atol=0.25)
    np.testing.assert_allclose(np.linalg.norm(whiten(vectors), axis=1), 1.0, atol=1e-5)
    assert Whitening.fit_sample(vectors, 4).projection.shape == (6, 3)  # a 4-row sample supports 3 dimensions


def test_curate_run_with_a_descriptor_checkpoint_and_whitening_groups_the_copies(tmp_path):
    from typer.testing import CliRunner

    from dinolab.curate import tables
    from dinolab.pipelines.cli import app

    photos = {name: _photo(name) for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry")}
    pool, evaluation = tmp_path / "pool", tmp_path / "eval"
    pool.mkdir(), evaluation.mkdir()
    for name, photo in photos.items():
        photo.save(pool / f"{name}.jpg", quality=95)
    ImageOps.mirror(photos["astronaut"].crop((20, 20, 236, 236))).save(pool / "a-copy.jpg")
    photos["coffee"].rotate(180).save(pool / "c-copy.jpg")  # a 90°-multiple rotation: candidates, then verified
    photos["chelsea"].save(evaluation / "chelsea.png")
    torch.manual_seed(0)
    checkpoint = tmp_path / "sscd.pt"
    torch.save({"model": SSCD("resnet18", dim=32).backbone.state_dict(), "arch": "resnet18"}, checkpoint)
    result = CliRunner().invoke(app, ["run", "--lake", str(pool), "--eval", str(evaluation), "--out", str(tmp_path / "out"),
                                      "--workers", "1", "ingest.min_side=32", f"dedup.descriptor={checkpoint}",
                                      "dedup.whitening=6", "dedup.threshold=0.3", "sample.method=all"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stdout
    assert "dedup: copy descriptor" in result.stdout  # the rule is said (the path may wrap)
    rows = {Path(row["uri"]).stem: row for row in tables.read_table(tmp_path / "out", "duplicates").to_pylist()}
    assert rows["a-copy"]["reason"] == "copy" and rows["a-copy"]["group"] == rows["astronaut"]["group"]
    assert rows["astronaut"]["kept"]  # the larger image of the group
    assert rows["c-copy"]["group"] == rows["coffee"]["group"] and rows["c-copy"]["kept"] != rows["coffee"]["kept"]
    assert rows["chelsea"]["reason"] == "leak:eval"
    assert all(rows[name]["kept"] for name in ("camera", "rocket", "immunohistochemistry"))


def test_copy_detection_is_one_rule_at_every_pool_size():
    from dinolab.curate.stages import dedup_rule
    from dinolab.schemas.config import PipelineConfig, load_config

    assert DedupConfig().descriptor == "local" and dedup_rule(PipelineConfig()) == "local"
    assert not hasattr(DedupConfig(), "local_max_images")  # no switch to embedding cosine by pool size
    assert dedup_rule(PipelineConfig(dedup=DedupConfig(descriptor="/w/sscd.pt"))) == "/w/sscd.pt"
    assert load_config(None, ["dedup.descriptor=embeddings"]).dedup.descriptor == "embeddings"  # only when asked
