"""One-shot segmentation from a reference mask: prototypes, maps, thresholds, IoU and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dinolab.pretrain.models import build_vit
from dinolab.features.segment import intersection_over_union, patch_coverage, prototypes, segment_target
from dinolab.features.viz.inputs import image_to_tensor
from tests.test_viz import run_cli


def test_patch_coverage_is_the_covered_area_fraction():
    mask = np.zeros((28, 28), dtype=bool)
    mask[:14, :21] = True  # patch (0,0) fully, patch (0,1) half
    assert patch_coverage(mask, (2, 2)).tolist() == [1.0, 0.5, 0.0, 0.0]


def test_prototypes_are_area_weighted_means_of_normalised_features():
    features = torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, 1.0], [1.0, 0.0]])
    coverage = torch.tensor([1.0, 0.5, 0.0, 0.0])
    foreground, background = prototypes(features, coverage)
    torch.testing.assert_close(foreground, torch.tensor([1.0, 0.5]) / 1.5)
    torch.testing.assert_close(background, torch.tensor([1.0, 1.5]) / 2.5)
    with pytest.raises(ValueError, match="covers no patch"):
        prototypes(features, torch.zeros(4))
    with pytest.raises(ValueError, match="whole image"):
        prototypes(features, torch.ones(4))


def test_intersection_over_union_by_hand():
    prediction = np.array([[1, 1, 0, 0]], dtype=bool)
    target = np.array([[0, 1, 1, 0]], dtype=bool)
    assert intersection_over_union(prediction, target) == pytest.approx(1 / 3)
    assert intersection_over_union(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def _easy_features(object_cells: np.ndarray, seed: int) -> torch.Tensor:
    """Patch features where the object is one direction and the background another, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    flat = torch.from_numpy(object_cells.reshape(-1)).float()
    features = 0.2 * torch.randn(flat.numel(), 8, generator=generator)
    features[:, 0] += 2 * flat
    features[:, 1] += 2 * (1 - flat)
    return features


@pytest.mark.parametrize("method", ["similarity", "fgbg"])
def test_segmentation_of_easy_features_has_high_iou(method):
    grid = (8, 8)
    reference_cells = np.zeros(grid, dtype=bool)
    reference_cells[1:4, 1:5] = True
    target_cells = np.zeros(grid, dtype=bool)
    target_cells[3:7, 2:7] = True
    reference_mask = np.kron(reference_cells, np.ones((14, 14), dtype=bool))
    foreground, background = prototypes(_easy_features(reference_cells, 0), patch_coverage(reference_mask, grid))
    result = segment_target(_easy_features(target_cells, 1), grid, foreground, background, (112, 112), method)
    truth = np.kron(target_cells, np.ones((14, 14), dtype=bool))
    assert result.mask.shape == (112, 112)
    assert intersection_over_union(result.mask, truth) > 0.85


def test_threshold_is_a_fraction_of_the_score_range():
    features = torch.eye(4)
    foreground = torch.tensor([1.0, 0.5, 0.0, 0.0])
    result = segment_target(features, (2, 2), foreground, -foreground, (2, 2), "similarity", threshold=0.5)
    scores = result.score_map
    assert result.threshold == pytest.approx(scores.min() + 0.5 * (scores.max() - scores.min()))
    assert np.array_equal(result.mask, scores > result.threshold)


def _red_square_scene(top: int, left: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(top * 100 + left)
    image = (rng.random((112, 112, 3)) * 255).astype(np.uint8)
    image[top : top + 42, left : left + 42] = (220, 30, 30)
    mask = np.zeros((112, 112), dtype=bool)
    mask[top : top + 42, left : left + 42] = True
    return image, mask


def test_segment_a_red_square_with_a_tiny_random_vit():
    model = build_vit("vit_pico").eval()
    reference, reference_mask = _red_square_scene(14, 14)
    target, target_mask = _red_square_scene(56, 42)
    with torch.no_grad():
        ref_out = model.forward_features(image_to_tensor(reference, model, 112))
        tgt_out = model.forward_features(image_to_tensor(target, model, 112))
    foreground, background = prototypes(ref_out.patch_tokens[0], patch_coverage(reference_mask, ref_out.grid_hw))
    result = segment_target(tgt_out.patch_tokens[0], tgt_out.grid_hw, foreground, background, (112, 112))
    assert intersection_over_union(result.mask, target_mask) > 0.8


def test_segment_cli_prints_iou_and_refuses_bad_masks(tmp_path, capsys):
    from dinolab.features.cli import segment

    reference, reference_mask = _red_square_scene(14, 14)
    target, target_mask = _red_square_scene(56, 42)
    Image.fromarray(reference).save(tmp_path / "ref.png")
    Image.fromarray(target).save(tmp_path / "tgt.png")
    Image.fromarray(reference_mask.astype(np.uint8) * 255).save(tmp_path / "ref_mask.png")
    small = np.asarray(Image.fromarray(target_mask.astype(np.uint8) * 255).resize((56, 56), Image.NEAREST))
    Image.fromarray(small).save(tmp_path / "tgt_mask_small.png")  # same aspect, other size: resized
    out = tmp_path / "out"
    argv = ["segment", "--arch", "vit_pico", "--size", "112", "--ref", str(tmp_path / "ref.png"),
            "--ref-mask", str(tmp_path / "ref_mask.png"), "--target", str(tmp_path / "tgt.png"), "--out", str(out)]
    assert run_cli(segment, argv + ["--target-mask", str(tmp_path / "tgt_mask_small.png")]) == 0
    captured = capsys.readouterr()
    iou = float(captured.out.split("IoU ")[1].split()[0])
    assert iou > 0.8
    assert "resizing mask" in captured.err
    picture = np.asarray(Image.open(out / "tgt_segment.png").convert("RGB"))
    assert picture.shape[1] > 4 * picture.shape[0] / 2  # five panels in a row
    saved_mask = np.asarray(Image.open(out / "tgt_mask.png")) > 0
    assert intersection_over_union(saved_mask, target_mask) == pytest.approx(iou, abs=1e-3)

    assert run_cli(segment, argv + ["--method", "fgbg"]) == 0
    Image.fromarray(np.zeros((50, 100), dtype=np.uint8)).save(tmp_path / "wide.png")
    assert run_cli(segment, argv[:-4] + ["--ref-mask", str(tmp_path / "wide.png")] + argv[-4:]) == 2
    assert "aspect ratio" in capsys.readouterr().out
    gray = (np.arange(112 * 112).reshape(112, 112) % 7).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    assert run_cli(segment, argv[:-4] + ["--ref-mask", str(tmp_path / "gray.png")] + argv[-4:]) == 2
    assert "not binary" in capsys.readouterr().out
    assert run_cli(segment, argv + ["--target-mask", "a.png", "b.png"]) == 2
