"""Block masking and per-batch iBOT mask sampling."""

import torch

from dinolab.pretrain.train.masking import BlockMaskGenerator, masks_weight, sample_ibot_masks


def test_block_mask_never_exceeds_target_and_gets_close():
    generator = torch.Generator().manual_seed(0)
    masker = BlockMaskGenerator((16, 16))
    assert masker.max_num_patches == 128
    counts = []
    for target in [0, 4, 26, 60, 128]:
        for _ in range(10):
            mask = masker(target, generator=generator)
            assert mask.shape == (16, 16) and mask.dtype == torch.bool
            assert int(mask.sum()) <= target
            counts.append((target, int(mask.sum())))
    assert all(c == 0 for t, c in counts if t == 0)
    # Blocks keep being added while they fit, so the masks reach most of the target on average.
    for target in [26, 60, 128]:
        got = [c for t, c in counts if t == target]
        assert sum(got) / len(got) >= 0.75 * target


def test_block_masks_are_rectangles_with_bounded_aspect():
    generator = torch.Generator().manual_seed(1)
    masker = BlockMaskGenerator((14, 14))
    for _ in range(20):
        mask = masker(12, generator=generator)  # room for a single block of >= 4 patches at most 12
        rows = mask.any(dim=1).nonzero().flatten()
        cols = mask.any(dim=0).nonzero().flatten()
        if len(rows) == 0:
            continue
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        if int(mask.sum()) == h * w:  # a single rectangle
            assert 0.2 <= h / w <= 5.0  # aspect drawn in [0.3, 3.33]; rounding small sides widens it


def test_seeded_generator_is_reproducible():
    masker = BlockMaskGenerator((8, 8))
    a = masker(20, generator=torch.Generator().manual_seed(7))
    b = masker(20, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_sample_ibot_masks_counts_and_stratified_ratios():
    generator = torch.Generator().manual_seed(2)
    masks = sample_ibot_masks(8, (16, 16), mask_probability=0.5, ratio_range=(0.1, 0.5), generator=generator)
    assert masks.shape == (8, 256) and masks.dtype == torch.bool
    counts = masks.sum(dim=1)
    assert int((counts > 0).sum()) == 4
    # Bins [0.1,0.2), [0.2,0.3), [0.3,0.4), [0.4,0.5): targets at most 51, 76, 102, 128 patches.
    masked = sorted(int(c) for c in counts if c > 0)
    for count, upper in zip(masked, [0.2, 0.3, 0.4, 0.5]):
        assert count <= int(256 * upper)
    assert masked[-1] > int(256 * 0.3) * 0.75  # the top-bin image is heavily masked


def test_which_images_are_masked_is_shuffled():
    positions = set()
    for seed in range(10):
        masks = sample_ibot_masks(4, (8, 8), mask_probability=0.5, generator=torch.Generator().manual_seed(seed))
        positions.add(tuple((masks.sum(1) > 0).tolist()))
    assert len(positions) > 1


def test_masks_weight_by_hand():
    masks = torch.tensor([[True, False, True, False], [False] * 4, [True, True, True, False]])
    expected = torch.tensor([0.5, 0.5, 1 / 3, 1 / 3, 1 / 3])
    torch.testing.assert_close(masks_weight(masks), expected)
    assert masks_weight(masks).sum().item() == 2.0  # one unit per masked image
    assert len(masks_weight(masks)) == len(masks.flatten().nonzero())
