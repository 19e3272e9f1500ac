"""Multi-crop augmentation: sizes, blur/solarize probabilities measured statistically, the bug switch, collate."""

import numpy as np
import pytest
import torch
from PIL import Image

from dinolab.pretrain.train.multicrop import MultiCropAugmentation, collate_multicrop

N_TRIALS = 100


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))


def _small(**kwargs):
    # σ ≥ 1 so every applied blur visibly changes a noise image (σ near 0.1 is an identity at uint8).
    base = dict(global_size=16, local_size=8, n_local=2, blur_sigma=(1.0, 2.0))
    return MultiCropAugmentation(**{**base, **kwargs})


def _fraction_changed(transform_a, transform_b, image, trials=N_TRIALS):
    """Run both pipelines with identical seeds; count crops where they differ (the extra op was applied)."""
    changed, threads = 0, torch.get_num_threads()
    torch.set_num_threads(1)  # hundreds of tiny ops: thread start-up would dominate on a busy machine
    try:
        for seed in range(trials):
            torch.manual_seed(seed)
            a = transform_a(image)
            torch.manual_seed(seed)
            b = transform_b(image)
            changed += not torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)
    return changed / trials


def test_shapes_dtype_and_count(image):
    crops = MultiCropAugmentation(global_size=28, local_size=14, n_local=3)(image)
    assert [tuple(c.shape) for c in crops["global_crops"]] == [(3, 28, 28)] * 2
    assert [tuple(c.shape) for c in crops["local_crops"]] == [(3, 14, 14)] * 3
    assert all(c.dtype == torch.float32 for c in crops["global_crops"] + crops["local_crops"])
    # Normalised with ImageNet statistics: values of a [0, 1] image land in [-2.2, 2.7].
    assert crops["global_crops"][0].min() >= -2.2 and crops["global_crops"][0].max() <= 2.7


def test_accepts_grayscale_pil_and_uint8_tensors(image):
    augment = _small()
    assert augment(image.convert("L"))["global_crops"][0].shape == (3, 16, 16)
    gray = torch.randint(0, 256, (1, 20, 20), dtype=torch.uint8)
    assert augment(gray)["local_crops"][0].shape == (3, 8, 8)
    with pytest.raises(ValueError):
        augment(torch.rand(3, 20, 20))


def test_sixteen_bit_images_keep_their_contrast():
    ramp = np.linspace(0, 65535, 20 * 20).reshape(20, 20)
    sixteen_bit = Image.fromarray(ramp.astype(np.uint16))
    thirty_two_bit = Image.fromarray(ramp.astype(np.int32), mode="I")
    assert sixteen_bit.mode.startswith("I;16") and thirty_two_bit.mode == "I"
    augment = _small(global_scale=(1.0, 1.0))
    for image in [sixteen_bit, thirty_two_bit]:
        crop = augment(image)["global_crops"][0]
        # A full-range ramp keeps a wide range (PIL's plain convert would clip it to near-white).
        assert crop.max() - crop.min() > 1.0


def _assert_binomial(got, p, trials):
    tolerance = 4 * np.sqrt(p * (1 - p) / trials) + 1e-9  # 4 binomial standard deviations
    assert abs(got - p) <= tolerance, (got, p)


def test_blur_probabilities_per_crop(image):
    with_blur = _small(solarize_p=0.0)
    without = _small(blur_p=(0.0, 0.0, 0.0), solarize_p=0.0)
    assert with_blur.blur_p == pytest.approx((1.0, 0.1, 0.5))
    _assert_binomial(_fraction_changed(with_blur.global_transform_1, without.global_transform_1, image), 1.0, N_TRIALS)
    _assert_binomial(_fraction_changed(with_blur.global_transform_2, without.global_transform_2, image), 0.1, N_TRIALS)
    _assert_binomial(_fraction_changed(with_blur.local_transform, without.local_transform, image), 0.5, N_TRIALS)


def test_released_blur_bug_switch(image):
    buggy = _small(released_blur_bug=True, solarize_p=0.0)
    without = _small(blur_p=(0.0, 0.0, 0.0), solarize_p=0.0)
    assert buggy.blur_p == pytest.approx((0.0, 0.9, 0.5))
    _assert_binomial(_fraction_changed(buggy.global_transform_1, without.global_transform_1, image, 60), 0.0, 60)
    _assert_binomial(_fraction_changed(buggy.global_transform_2, without.global_transform_2, image, 60), 0.9, 60)


def test_solarize_only_on_second_global_crop(image):
    with_sol = _small(blur_p=(0.0, 0.0, 0.0), solarize_p=0.2)
    without = _small(blur_p=(0.0, 0.0, 0.0), solarize_p=0.0)
    second = _fraction_changed(with_sol.global_transform_2, without.global_transform_2, image)
    _assert_binomial(second, 0.2, N_TRIALS)
    assert _fraction_changed(with_sol.global_transform_1, without.global_transform_1, image, trials=30) == 0.0
    assert _fraction_changed(with_sol.local_transform, without.local_transform, image, trials=30) == 0.0


def test_collate_layout_is_crop_major():
    def fake(image_id, n_local):
        return {
            "global_crops": [torch.full((3, 4, 4), 10.0 * image_id + g) for g in range(2)],
            "local_crops": [torch.full((3, 2, 2), 10.0 * image_id + l) for l in range(n_local)],
        }

    batch = collate_multicrop([(fake(i, 3), i) for i in range(4)])
    assert batch["global_crops"].shape == (8, 3, 4, 4) and batch["local_crops"].shape == (12, 3, 2, 2)
    assert batch["global_crops"][:, 0, 0, 0].tolist() == [0, 10, 20, 30, 1, 11, 21, 31]
    assert batch["local_crops"][:, 0, 0, 0].tolist() == [0, 10, 20, 30, 1, 11, 21, 31, 2, 12, 22, 32]
    assert batch["labels"].tolist() == [0, 1, 2, 3]
    no_local = collate_multicrop([fake(0, 0), fake(1, 0)])
    assert no_local["local_crops"].numel() == 0 and "labels" not in no_local
    with pytest.raises(ValueError):
        collate_multicrop([])


def test_real_sizes_through_collate(image):
    augment = MultiCropAugmentation(global_size=28, local_size=14, n_local=2)
    batch = collate_multicrop([(augment(image), 3), (augment(image), 5)])
    assert batch["global_crops"].shape == (4, 3, 28, 28)
    assert batch["local_crops"].shape == (4, 3, 14, 14)
