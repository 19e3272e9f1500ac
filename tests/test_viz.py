"""Pictures: CLS attention, patch PCA, patch matching, shared drawing and input preparation."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from dinolab.features.cli import UserError
from dinolab.pretrain.models import build_vit
from dinolab.features.viz.attention import attention_panels, cls_attention, render_attention
from dinolab.features.viz.inputs import (
    ImageInputError,
    binarize_mask,
    image_to_tensor,
    load_mask,
    load_rgb,
    resize_mask,
    snapped_size,
)
from dinolab.features.viz.match import PatchMatch, mutual_nearest_patches, patch_centre, render_matches
from dinolab.features.viz.overlay import mask_overlay, normalize01, upsample_map
from dinolab.features.viz.pca import pca_of_patches, render_pca


def square_image(size: int = 112, low: int = 60, square=(28, 84)) -> np.ndarray:
    """Dark noisy background with a bright square (patch-aligned for patch 14)."""
    rng = np.random.default_rng(0)
    image = (rng.random((size, size, 3)) * low).astype(np.uint8)
    image[square[0] : square[1], square[0] : square[1]] = 230
    return image


def run_cli(module, argv: list[str]) -> int:
    """Parse and run one of this area's subcommands alone (as ``features.cli.main`` does)."""
    parser = argparse.ArgumentParser(prog="features")
    module.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as error:
        print(f"error: {error}")
        return 2


# ------------------------------------------------------------------ inputs
def test_snapped_size_keeps_aspect_and_patch_multiples():
    assert snapped_size(375, 500, 224, 14) == (224, 294)  # 500·224/375 = 298.7 → 21 patches
    assert snapped_size(300, 30, 56, 14) == (224, 56)  # elongated: the long side is capped at 4×
    with pytest.raises(ImageInputError, match="elongated"):
        snapped_size(1000, 10, 56, 14)


def test_image_to_tensor_normalises_with_model_statistics():
    model = build_vit("vit_pico")
    image = np.full((30, 45, 3), 255, dtype=np.uint8)
    batch = image_to_tensor(image, model, 28)
    assert batch.shape == (1, 3, 28, 42)
    expected = (1 - torch.tensor(model.preprocessing.mean)) / torch.tensor(model.preprocessing.std)
    torch.testing.assert_close(batch[0, :, 5, 5], expected, atol=1e-4, rtol=0)


def test_load_rgb_handles_16bit_grayscale_and_rejects_garbage(tmp_path):
    ramp = (np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "gray16.png")
    rgb = load_rgb(tmp_path / "gray16.png")
    assert rgb.shape == (40, 40, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0] < rgb[-1, -1, 0]
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageInputError, match="broken.jpg"):
        load_rgb(tmp_path / "broken.jpg")


def test_masks_must_be_binary_and_of_the_same_aspect(tmp_path):
    assert binarize_mask(np.array([[0, 7], [7, 0]])).tolist() == [[False, True], [True, False]]
    with pytest.raises(ImageInputError, match="not binary"):
        binarize_mask(np.array([[0, 1], [2, 3]]))
    Image.fromarray(np.array([[0, 255], [255, 255]], dtype=np.uint8)).save(tmp_path / "m.png")
    assert load_mask(tmp_path / "m.png").sum() == 3
    mask = np.zeros((20, 30), dtype=bool)
    mask[:, 15:] = True
    with pytest.warns(UserWarning, match="resizing"):
        resized = resize_mask(mask, (40, 60))
    assert resized.shape == (40, 60) and resized[:, 30:].all() and not resized[:, :30].any()
    with pytest.raises(ImageInputError, match="aspect"):
        resize_mask(mask, (40, 40))


# ----------------------------------------------------------------- drawing
def test_overlay_helpers():
    up = upsample_map(np.array([[0.0, 1.0], [0.0, 1.0]]), (4, 8))
    assert up.shape == (4, 8) and up[:, 0].max() == 0 and up[:, -1].min() == 1
    assert normalize01(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = True
    tinted = mask_overlay(image, mask, color=(200, 0, 0), alpha=0.5)
    assert tinted[0, 0].tolist() == [100, 0, 0] and not tinted[1:].any()


# --------------------------------------------------------------- attention
def _explicit_cls_attention(model, batch):
    """Independent recomputation: tokens through all but the last block, then q·k softmax by hand."""
    x = model.prepare_tokens(batch)
    for block in model.blocks[:-1]:
        x = block(x)
    last = model.blocks[-1]
    qkv = last.attn.qkv(last.norm1(x))
    heads = last.attn.num_heads
    q, k, _ = qkv.reshape(1, x.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)
    logits = torch.einsum("hd,hnd->hn", q[0, :, 0], k[0]) / q.shape[-1] ** 0.5  # CLS row [heads, N]
    return logits.softmax(-1)


def test_cls_attention_splits_registers_and_renormalises_patches():
    model = build_vit("vit_pico", num_register_tokens=3).eval()
    batch = image_to_tensor(square_image(56, square=(14, 42)), model, 56)
    attention = cls_attention(model, batch)
    assert attention.patch_maps.shape == (2, 4, 4) and attention.register_weights.shape == (2, 3)
    with torch.no_grad():
        expected = _explicit_cls_attention(model, batch)
    torch.testing.assert_close(attention.register_weights, expected[:, 1:4], atol=1e-5, rtol=1e-4)
    patches = expected[:, 4:] / expected[:, 4:].sum(-1, keepdim=True)
    torch.testing.assert_close(attention.patch_maps.reshape(2, -1), patches, atol=1e-5, rtol=1e-4)
    share = expected[:, 1:4].sum(-1)
    torch.testing.assert_close(attention.register_share, share, atol=1e-5, rtol=1e-4)


def test_attention_picture_differs_across_heads(tmp_path):
    model = build_vit("vit_pico").eval()
    image = square_image()
    attention = cls_attention(model, image_to_tensor(image, model, 112))
    panels, titles = attention_panels(image, attention)
    assert titles == ["input", "head 0", "head 1", "mean of heads"]
    assert all(panel.shape == image.shape for panel in panels)
    assert np.abs(panels[1].astype(int) - panels[2].astype(int)).mean() > 1.0
    path = render_attention(image, attention, tmp_path / "att.png")
    saved = np.asarray(Image.open(path).convert("RGB"))
    assert saved.shape[1] > saved.shape[0] and saved.std() > 10


# --------------------------------------------------------------------- PCA
def test_pca_foreground_of_synthetic_features_is_the_square_whatever_the_sign():
    rng = np.random.default_rng(0)
    grid = (6, 6)
    inside = np.zeros(grid, dtype=bool)
    inside[2:4, 1:5] = True
    for sign in (1.0, -1.0):  # the PCA sign is arbitrary: the border rule must pick the square
        features = rng.normal(0, 0.05, (36, 16)).astype(np.float32)
        features[:, 0] += sign * inside.reshape(-1) * 3.0
        features[:, 1] += rng.normal(0, 0.3, 36).astype(np.float32) * inside.reshape(-1)
        result = pca_of_patches([features], [grid])
        assert np.array_equal(result.foreground[0], inside)
        assert (result.rgb[0][~inside] == 0).all() and result.rgb[0][inside].max() == pytest.approx(1.0)


def test_pca_of_a_bright_square_image_separates_the_square(tmp_path):
    model = build_vit("vit_pico").eval()
    images = [square_image(), square_image(square=(14, 56))]
    with torch.no_grad():
        outputs = [model.forward_features(image_to_tensor(im, model, 112)) for im in images]
    result = pca_of_patches([o.patch_tokens[0] for o in outputs], [o.grid_hw for o in outputs])
    wanted = [np.zeros((8, 8), dtype=bool) for _ in images]
    wanted[0][2:6, 2:6] = True
    wanted[1][1:4, 1:4] = True
    for found, expected in zip(result.foreground, wanted):
        assert (found == expected).mean() >= 0.95
    path = render_pca(images, result, tmp_path / "pca.png")
    assert np.asarray(Image.open(path)).shape[0] > 200  # two rows of panels


def test_pca_rejects_mismatched_grid():
    with pytest.raises(ValueError, match="grid"):
        pca_of_patches([np.zeros((10, 4))], [(3, 3)])


# ------------------------------------------------------------------- match
def test_mutual_nearest_patches_recover_a_permutation():
    features_a = torch.randn(12, 8)
    order = torch.randperm(12)
    matches = mutual_nearest_patches(features_a, features_a[order])
    assert len(matches) == 12
    assert all(int(order[m.index_b]) == m.index_a for m in matches)
    assert all(m.similarity == pytest.approx(1.0, abs=1e-5) for m in matches)


def test_mutual_nearest_patches_drops_one_sided_pairs():
    a = torch.tensor([[1.0, 0.0], [0.9, 0.1]])
    b = torch.tensor([[1.0, 0.05], [0.0, 1.0]])
    # a0→b0, a1→b0, b0→a0, b1→a1: only (0, 0) is mutual.
    matches = mutual_nearest_patches(a, b)
    assert [(m.index_a, m.index_b) for m in matches] == [(0, 0)]


def test_match_picture(tmp_path):
    assert patch_centre(5, (2, 4), (20, 40)) == (15.0, 15.0)
    image = square_image(56, square=(14, 42))
    path = render_matches(image, (4, 4), image, (4, 4), [PatchMatch(5, 5, 1.0)], tmp_path / "m.png")
    assert np.asarray(Image.open(path)).shape[1] == 800


# --------------------------------------------------------------------- CLI
def test_visualize_cli_end_to_end(tmp_path, capsys):
    from dinolab.features.cli import visualize

    Image.fromarray(square_image()).save(tmp_path / "square.png")
    Image.fromarray(square_image(square=(14, 56))).save(tmp_path / "other.png")
    out = tmp_path / "out"
    common = ["--arch", "vit_pico", "--size", "56", "--out", str(out)]
    assert run_cli(visualize, ["visualize", "attention", str(tmp_path / "square.png"), *common]) == 0
    pair = [str(tmp_path / "square.png"), str(tmp_path / "other.png")]
    assert run_cli(visualize, ["visualize", "pca", *pair, *common]) == 0
    assert run_cli(visualize, ["visualize", "match", *pair, *common]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["match_square_other.png", "pca.png", "square_attention.png"]
    (tmp_path / "empty.png").write_bytes(b"")
    assert run_cli(visualize, ["visualize", "attention", str(tmp_path / "empty.png"), *common]) == 2
    assert "empty.png" in capsys.readouterr().out
    assert run_cli(visualize, ["visualize", "attention", str(tmp_path / "square.png"), "--block", "5", *common]) == 2


@pytest.mark.parametrize("fmt", ["safetensors", "hub"])
def test_pictures_from_saved_checkpoints(tmp_path, fmt):
    from dinolab.pretrain.checkpoints import save_backbone
    from dinolab.features.cli import visualize
    from dinolab.features.viz.inputs import load_model

    model = build_vit("vit_pico", num_heads=1).eval()  # released layout: heads = dim // 64
    weights = save_backbone(model, tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pth"), fmt)
    loaded = load_model(str(weights), None)
    image = square_image()
    batch = image_to_tensor(image, model, 56)
    torch.testing.assert_close(cls_attention(loaded, batch).patch_maps, cls_attention(model, batch).patch_maps)
    Image.fromarray(image).save(tmp_path / "square.png")
    argv = ["visualize", "attention", str(tmp_path / "square.png"), "--weights", str(weights), "--size", "56",
            "--out", str(tmp_path / "out")]
    assert run_cli(visualize, argv) == 0
    assert (tmp_path / "out" / "square_attention.png").is_file()


def test_bad_weights_are_a_clear_error(tmp_path, capsys):
    from dinolab.features.cli import visualize

    (tmp_path / "junk.pth").write_bytes(b"\x00garbage")
    Image.fromarray(square_image()).save(tmp_path / "square.png")
    argv = ["visualize", "pca", str(tmp_path / "square.png"), "--weights", str(tmp_path / "junk.pth"),
            "--out", str(tmp_path / "out")]
    assert run_cli(visualize, argv) == 2
    assert "cannot load the backbone" in capsys.readouterr().out
    assert run_cli(visualize, argv[:3] + ["--arch", "vit_nonexistent", "--out", str(tmp_path)]) == 2
