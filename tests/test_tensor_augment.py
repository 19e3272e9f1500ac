"""Batched multi-crop augmentation: shapes, value ranges, exact identities and simple statistics."""

from dataclasses import replace

import pytest
import torch

from dinolab.pretrain.models.vit import IMAGENET_MEAN, IMAGENET_STD
from dinolab.pretrain.train.config import CropConfig
from dinolab.pretrain.train.tensor_augment import (
    BatchRows,
    TensorMultiCrop,
    color_jitter,
    gaussian_blur,
    random_resized_crop,
    solarize,
)

SMALL = CropConfig(global_size=28, local_size=12, num_local=3, global_scale=(0.4, 1.0), local_scale=(0.1, 0.4),
                   blur_sigma=(0.1, 1.0), storage_size=28)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return x * std + mean


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_ranges(channels):
    images = torch.randint(0, 256, (8, channels, 28, 28), dtype=torch.uint8)
    crops = TensorMultiCrop(SMALL)(images, _gen())
    assert crops.global_crops.shape == (16, 3, 28, 28)
    assert crops.local_crops.shape == (24, 3, 12, 12)
    assert crops.batch_size == 8
    for batch in (crops.global_crops, crops.local_crops):
        pixels = _unnormalise(batch)
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
        if channels == 1:  # grayscale input is repeated to 3 identical channels
            assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=1e-5)


def test_same_generator_seed_gives_same_crops_and_different_seed_differs():
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    augment = TensorMultiCrop(SMALL)
    first, second, other = augment(images, _gen(1)), augment(images, _gen(1)), augment(images, _gen(2))
    assert torch.equal(first.global_crops, second.global_crops)
    assert torch.equal(first.local_crops, second.local_crops)
    assert not torch.equal(first.global_crops, other.global_crops)


def test_full_crop_without_flip_is_identity_and_flip_mirrors():
    images = torch.rand(3, 1, 16, 16)
    same = random_resized_crop(images, 16, (1.0, 1.0), 0.0, _gen(), ratio=(1.0, 1.0))
    assert torch.allclose(same, images, atol=1e-5)
    flipped = random_resized_crop(images, 16, (1.0, 1.0), 1.0, _gen(), ratio=(1.0, 1.0))
    assert torch.allclose(flipped, images.flip(-1), atol=1e-5)


def test_crop_area_follows_scale():
    # A crop of area fraction s of a linear ramp image spans a width sqrt(s*r) of it: check mean span.
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(2000, 1, 64, 64).contiguous()
    crops = random_resized_crop(ramp, 16, (0.25, 0.25), 0.0, _gen(), ratio=(1.0, 1.0))
    spans = crops[:, 0, 0, -1] - crops[:, 0, 0, 0]
    # width 0.5 of the image; sampled at pixel centres the span is 0.5 * 15/16 of the ramp
    assert torch.allclose(spans.mean(), torch.tensor(0.5 * 15 / 16), atol=0.01)


def test_solarize_inverts_bright_pixels_only():
    images = torch.tensor([0.1, 0.4, 0.5, 0.9]).view(1, 1, 1, 4)
    out = solarize(images, 1.0, _gen())
    assert torch.allclose(out.flatten(), torch.tensor([0.1, 0.4, 0.5, 0.1]))
    assert torch.equal(solarize(images, 0.0, _gen()), images)


def test_blur_keeps_mean_and_lowers_variance():
    images = torch.rand(4, 3, 32, 32)
    blurred = gaussian_blur(images, 1.0, (1.0, 1.0), _gen())
    assert torch.allclose(blurred.mean(), images.mean(), atol=0.01)
    assert blurred.var() < 0.5 * images.var()
    assert torch.equal(gaussian_blur(images, 0.0, (1.0, 1.0), _gen()), images)


def test_color_jitter_probability_zero_is_identity_and_brightness_scales():
    images = torch.rand(6, 3, 8, 8) * 0.5
    assert torch.allclose(color_jitter(images, 0.4, 0.4, 0.2, 0.0, _gen()), images, atol=1e-6)
    jittered = color_jitter(images, 0.4, 0.0, 0.0, 1.0, _gen())
    ratio = jittered.mean(dim=(1, 2, 3)) / images.mean(dim=(1, 2, 3))
    assert ((ratio >= 0.6 - 1e-4) & (ratio <= 1.4 + 1e-4)).all() and ratio.std() > 0.01


def test_no_local_crops():
    crops = TensorMultiCrop(replace(SMALL, num_local=0))(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), _gen())
    assert crops.local_crops is None and crops.global_crops.shape == (4, 3, 28, 28)


def test_rejects_wrong_layout():
    with pytest.raises(ValueError, match="expected images"):
        TensorMultiCrop(SMALL)(torch.zeros(2, 28, 28), _gen())


@pytest.mark.parametrize("world", [2, 4])
def test_each_process_gets_its_rows_of_the_global_batch_draws(world):
    """Rank r holding images r::W of the global batch gets exactly those rows of the single-process crops."""
    config = replace(SMALL, solarize_prob=0.5, grayscale_prob=0.5, blur_prob_local=0.5)
    images = torch.randint(0, 256, (8, 3, 28, 28), dtype=torch.uint8)
    augment = TensorMultiCrop(config)
    whole = augment(images, _gen(3))
    assert torch.equal(augment(images, _gen(3), BatchRows(8)).global_crops, whole.global_crops)
    for rank in range(world):
        rows = BatchRows(8, rank, world)
        part = augment(images[rank::world], _gen(3), rows)
        torch.testing.assert_close(part.global_crops, rows.repeat(2).select(whole.global_crops), rtol=0, atol=1e-6)
        torch.testing.assert_close(part.local_crops, rows.repeat(3).select(whole.local_crops), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="selects 4 rows"):
        augment(images[:3], _gen(3), BatchRows(8, 0, 2))


def test_ibot_masks_of_a_process_are_its_rows_of_the_global_masks():
    from dinolab.pretrain.train.config import build_config
    from dinolab.pretrain.train.loop import crops_and_masks

    config = build_config("fmnist-tiny", ["loss.mask_probability=0.5", "loss.ibot_weight=1.0",
                                                "model.patch_size=7"])
    augment = TensorMultiCrop(config.crops)
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    _, whole = crops_and_masks(config, augment, images, step=4, device=torch.device("cpu"))
    assert whole.shape[0] == 12 and whole.any(dim=1).sum() == 6
    for rank in range(2):
        rows = BatchRows(6, rank, 2)
        _, part = crops_and_masks(config, augment, images[rank::2], 4, torch.device("cpu"), rows)
        assert torch.equal(part, whole[rank::2])  # 2 global crops x 6 images, crop-major: rows rank::2
