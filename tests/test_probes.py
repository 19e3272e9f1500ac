"""Dense probes: features, heads, losses and metrics by hand; pairs folders; training; the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from dinolab.pretrain.models import build_vit
from dinolab.features.probes.depth import DepthProbe, DepthRange, depth_metrics, scale_invariant_log_loss
from dinolab.features.probes.features import dense_features, depth_feature_spec, segmentation_feature_spec
from dinolab.features.probes.pairs import DensePair, folder_pairs, split_pairs
from dinolab.features.probes.protocol import render_probe, run_depth_probe, run_segmentation_probe
from dinolab.features.probes.segmentation import confusion_matrix, mean_iou, predict_multiscale
from dinolab.features.viz.inputs import ImageInputError
from tests.test_viz import run_cli


# ------------------------------------------------------------- by hand
def test_depth_metrics_by_hand():
    prediction = torch.tensor([1.0, 2.0, 4.0, 9.0])
    target = torch.tensor([1.0, 4.0, 4.0, float("nan")])  # the NaN pixel is ignored
    metrics = depth_metrics(prediction, target)
    assert metrics["rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert metrics["abs_rel"] == pytest.approx((0 + 2 / 4 + 0) / 3)
    assert metrics["delta1"] == pytest.approx(2 / 3)  # ratio 2 fails, ratios 1 pass


def test_scale_invariant_log_loss_by_hand():
    target = torch.tensor([[1.0, 2.0], [3.0, float("nan")]])
    loss = scale_invariant_log_loss(2 * torch.nan_to_num(target, nan=1.0), target)
    assert float(loss) == pytest.approx(math.log(2) * math.sqrt(1 - 0.85), rel=1e-5)
    perfect = scale_invariant_log_loss(torch.nan_to_num(target, nan=5.0), target)
    assert float(perfect) < 1e-5


def test_classification_head_is_the_expectation_over_bins():
    probe = DepthProbe(4, DepthRange(1.0, 3.0), "classification")
    torch.nn.init.zeros_(probe.head.classifier.weight)
    torch.nn.init.zeros_(probe.head.classifier.bias)  # equal weights → mean of the bin centres
    depth = probe.eval()(torch.randn(1, 4, 2, 2), (5, 6))
    torch.testing.assert_close(depth, torch.full((1, 5, 6), 2.0))
    with torch.no_grad():
        probe.head.classifier.bias[-1] = 1e5  # nearly all weight on the last bin (linear normalisation)
        assert float(probe(torch.randn(1, 4, 2, 2), (5, 6)).min()) > 2.99


def test_depth_range_ignores_stray_readings():
    values = torch.linspace(1.0, 2.0, 1000)
    values[0], values[1] = float("nan"), 80.0
    depth_range = DepthRange.of([values])
    assert 0.99 < depth_range.low < 1.01 and 1.98 < depth_range.high < 2.0


def test_mean_iou_by_hand_and_ignore_label():
    target = torch.tensor([0, 0, 1, 1, 255, 2])
    prediction = torch.tensor([0, 1, 1, 1, 0, 0])
    confusion = confusion_matrix(prediction, target, 3)
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    miou, per_class = mean_iou(confusion)
    # class 0: 1 / (2 + 2 - 1); class 1: 2 / (2 + 3 - 2); class 2: 0 / (1 + 0 - 0)
    assert per_class == pytest.approx({0: 1 / 3, 1: 2 / 3, 2: 0.0})
    assert miou == pytest.approx(1 / 3)


def test_multiscale_prediction_averages_softmax_over_scales_and_flips():
    from dinolab.features.probes.head import DenseLinearHead

    head = DenseLinearHead(2, 3).eval()
    maps = {s: torch.randn(1, 2, 3, 4) for s in (0.5, 1.0)}
    probs = predict_multiscale(head, lambda s, flip: maps[s].flip(-1) if flip else maps[s], (6, 8), (0.5, 1.0))
    expected = sum(head(maps[s], (6, 8)).softmax(1) for s in (0.5, 1.0)) / 2  # flips give the same here
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------ features
def test_feature_specs_follow_dinov2():
    assert depth_feature_spec(12, "lin.1").layers == (11,)
    assert depth_feature_spec(12, "lin.4").layers == (2, 5, 8, 11)  # blocks 3, 6, 9, 12
    assert segmentation_feature_spec(12, "+ms").layers == (8, 9, 10, 11)
    assert depth_feature_spec(12, "lin.4").channels(384) == 4 * 768


def test_dense_features_concatenate_patch_and_class_tokens():
    model = build_vit("vit_pico").eval()
    images = torch.randn(1, 3, 28, 42)
    spec = depth_feature_spec(2, "lin.1")
    maps = dense_features(model, images, spec)
    assert maps.shape == (1, 128, 2, 3)
    with torch.no_grad():
        out = model.forward_features(images)
    torch.testing.assert_close(maps[0, :64].flatten(1).T, out.patch_tokens[0])
    torch.testing.assert_close(maps[0, 64:, 1, 2], out.cls_token[0])


# --------------------------------------------------------------- pairs
def _scene(seed: int, height: int = 56, width: int = 84) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A photo whose brightness encodes depth, and a two-class map (bright half vs dark half)."""
    rng = np.random.default_rng(seed)
    depth = np.tile(np.linspace(0.5, 3.0, width, dtype=np.float32), (height, 1))
    if seed % 2:
        depth = depth[:, ::-1].copy()
    shade = (255 * (1 - (depth - 0.5) / 2.5)).astype(np.uint8)
    image = np.stack([shade, shade // 2, 255 - shade], -1)
    image = np.clip(image.astype(int) + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)
    labels = (depth > 1.75).astype(np.int64)
    return image, depth, labels


def _write_folder(root, task: str, count: int = 3) -> None:
    (root / "images").mkdir(parents=True)
    (root / ("depth" if task == "depth" else "masks")).mkdir()
    for index in range(count):
        image, depth, labels = _scene(index)
        Image.fromarray(image).save(root / "images" / f"scene{index}.jpg")
        if task == "depth":
            millimetres = (depth * 1000).astype(np.uint16)
            millimetres[0, 0] = 0  # unknown pixel
            Image.fromarray(millimetres).save(root / "depth" / f"scene{index}.png")
        else:
            Image.fromarray(labels.astype(np.uint8)).save(root / "masks" / f"scene{index}.png")


def test_folder_pairs_read_16bit_depth_and_masks(tmp_path):
    _write_folder(tmp_path / "d", "depth")
    pairs = folder_pairs(tmp_path / "d", "depth")
    assert [p.name for p in pairs] == ["scene0", "scene1", "scene2"]
    assert np.isnan(pairs[0].target[0, 0]) and pairs[0].target[5, -1] == pytest.approx(3.0, abs=1e-3)
    _write_folder(tmp_path / "s", "segmentation")
    assert set(np.unique(folder_pairs(tmp_path / "s", "segmentation")[0].target)) == {0, 1}
    train, val = split_pairs(pairs, 0.25)
    assert len(train) == 2 and len(val) == 1


def test_folder_pairs_errors(tmp_path):
    with pytest.raises(ImageInputError, match="images/"):
        folder_pairs(tmp_path, "depth")
    (tmp_path / "images").mkdir()
    (tmp_path / "depth").mkdir()
    with pytest.raises(ImageInputError, match="no images"):
        folder_pairs(tmp_path, "depth")
    image, depth, _ = _scene(0)
    Image.fromarray(image).save(tmp_path / "images" / "a.png")
    Image.fromarray(image).save(tmp_path / "images" / "b.png")
    np.save(tmp_path / "depth" / "a.npy", depth)
    with pytest.raises(ImageInputError, match="without a partner.*b"):
        folder_pairs(tmp_path, "depth")
    np.save(tmp_path / "depth" / "b.npy", depth[:, :50])
    with pytest.raises(ImageInputError, match="must match pixel for pixel"):
        folder_pairs(tmp_path, "depth")
    Image.fromarray(image).save(tmp_path / "depth" / "b.png")  # an RGB picture is not a depth map
    (tmp_path / "depth" / "b.npy").unlink()
    with pytest.raises(ImageInputError, match="16-bit"):
        folder_pairs(tmp_path, "depth")


def test_single_pair_is_split_into_halves():
    image, depth, _ = _scene(0)
    train, val = split_pairs([DensePair("x", image, depth)])
    assert train[0].image.shape == (56, 42, 3) and val[0].target.shape == (56, 42)
    assert np.array_equal(val[0].target, depth[:, 42:])


# ------------------------------------------------------------ training
@pytest.mark.parametrize("head", ["classification", "regression"])
def test_depth_probe_training_loss_decreases_and_learns_the_easy_scene(head):
    model = build_vit("vit_pico").eval()
    pairs = [DensePair(f"s{i}", *_scene(i)[:2]) for i in range(3)]
    report = run_depth_probe(model, pairs[:2], pairs[2:], "lin.4", head, steps=40, lr=3e-2, short_side=56)
    assert np.mean(report.losses[-10:]) < 0.6 * np.mean(report.losses[:5])
    assert report.metrics["delta1"] > 0.6
    assert report.baseline["delta1"] < 0.4  # a constant guess (training median) cannot follow the ramp
    assert set(report.metrics) == {"rmse", "abs_rel", "delta1"}


def test_segmentation_probe_training_loss_decreases(tmp_path):
    model = build_vit("vit_pico").eval()
    pairs = [DensePair(f"s{i}", _scene(i)[0], _scene(i)[2]) for i in range(3)]
    report = run_segmentation_probe(model, pairs[:2], pairs[2:], "+ms", steps=30, lr=3e-2, short_side=56)
    assert np.mean(report.losses[-10:]) < 0.5 * np.mean(report.losses[:5])
    assert report.metrics["miou"] > 0.6
    assert report.baseline["miou"] < 0.4  # one class everywhere: IoU ≈ 0.5 for it, 0 for the other
    name, image, target, prediction = report.examples[0]
    assert image.shape[:2] == target.shape == prediction.shape
    path = render_probe(report, "segmentation", tmp_path / "seg.png")
    assert np.asarray(Image.open(path)).shape[1] > np.asarray(Image.open(path)).shape[0]


# ----------------------------------------------------------------- CLI
def test_probe_cli_on_a_folder(tmp_path, capsys):
    from dinolab.features.cli import probe

    _write_folder(tmp_path / "d", "depth", count=2)
    out = tmp_path / "out"
    argv = ["probe", "depth", "--arch", "vit_pico", "--size", "56", "--steps", "20", "--head", "regression",
            "--data", str(tmp_path / "d"), "--out", str(out)]
    assert run_cli(probe, argv) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["train_images"] == 1 and summary["eval_images"] == 1
    assert set(summary["metrics"]) == {"rmse", "abs_rel", "delta1"}
    assert f"delta1: {summary['metrics']['delta1']:.4f}   (constant prediction:" in capsys.readouterr().out
    picture = np.asarray(Image.open(out / "probe_depth.png").convert("RGB"))
    assert picture.shape[1] > 2 * picture.shape[0]  # input | target | prediction
    assert run_cli(probe, argv[:-4] + ["--data", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "neither a folder" in capsys.readouterr().out
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    seg_argv = ["probe", "seg", "--arch", "vit_pico", "--data", str(tmp_path / "empty"), "--out", str(out)]
    assert run_cli(probe, seg_argv) == 2
    assert "no images" in capsys.readouterr().out


def test_head_equals_upsample_then_linear_in_eval_mode():
    """Classifying on the grid then upsampling = DINOv2's upsample-then-classify (affine maps commute)."""
    import torch.nn.functional as F

    from dinolab.features.probes.head import DenseLinearHead

    head = DenseLinearHead(6, 3)
    with torch.no_grad():
        head.norm.running_mean.normal_()
        head.norm.running_var.uniform_(0.5, 2.0)
        head.norm.weight.normal_()
    head.eval()
    features = torch.randn(2, 6, 3, 5)
    upsampled = F.interpolate(features, scale_factor=4, mode="bilinear", align_corners=False)
    expected = head.classifier(head.norm(upsampled))
    torch.testing.assert_close(head(features), expected, atol=1e-5, rtol=1e-5)
