"""iBOT masks for the student's global crops (iBOT §3.2, BEiT §2.5 block-wise masking, DINOv2 §4).

:class:`BlockMaskGenerator` masks random rectangles (area ≥ ``min_num_patches``, aspect ratio
log-uniform in ``[min_aspect, max_aspect]``) until a target number of patches is reached, never
exceeding it. :func:`sample_ibot_masks` masks a fraction ``mask_probability`` of the images of a
batch, with per-image ratios drawn from stratified bins of ``ratio_range`` so the batch covers the
whole range. :func:`masks_weight` gives each masked patch the weight ``1 / (masked patches of its
image)`` used by :class:`~pretrain.train.losses.ibot.IBOTPatchLoss`.

Example::

    masks = sample_ibot_masks(2 * batch, (16, 16))        # [2B, 256] bool
    weights = masks_weight(masks)                          # [M], order of masks.flatten().nonzero()
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(low: int, high_inclusive: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(low, high_inclusive + 1, (), generator=generator).item())


class BlockMaskGenerator:
    """BEiT-style block masking on a ``grid_hw`` patch grid."""

    def __init__(
        self,
        grid_hw: tuple[int, int],
        max_num_patches: int | None = None,
        min_num_patches: int = 4,
        min_aspect: float = 0.3,
        max_aspect: float | None = 1 / 0.3,
    ) -> None:
        self.height, self.width = grid_hw
        self.num_patches = self.height * self.width
        self.max_num_patches = int(0.5 * self.num_patches) if max_num_patches is None else max_num_patches
        self.min_num_patches = min_num_patches
        max_aspect = 1 / min_aspect if max_aspect is None else max_aspect
        self.log_aspect_range = (math.log(min_aspect), math.log(max_aspect))

    def _add_block(self, mask: Tensor, max_new: int, generator: torch.Generator | None) -> int:
        """Try (up to 10 times) to mask one rectangle adding 1..``max_new`` patches; return the count."""
        for _ in range(10):
            area = _uniform(self.min_num_patches, max_new, generator)
            aspect = math.exp(_uniform(*self.log_aspect_range, generator))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if not (0 < h < self.height and 0 < w < self.width):
                continue
            top = _randint(0, self.height - h, generator)
            left = _randint(0, self.width - w, generator)
            block = mask[top : top + h, left : left + w]
            new = int((~block).sum())
            if 0 < new <= max_new:
                block.fill_(True)
                return new
        return 0

    def __call__(self, num_masking_patches: int, generator: torch.Generator | None = None) -> Tensor:
        """A ``[h, w]`` bool mask with at most ``num_masking_patches`` True entries."""
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = 0
        while count < num_masking_patches:
            max_new = min(num_masking_patches - count, self.max_num_patches)
            added = self._add_block(mask, max_new, generator)
            if added == 0:
                break
            count += added
        return mask


def sample_ibot_masks(
    batch_size: int,
    grid_hw: tuple[int, int],
    mask_probability: float = 0.5,
    ratio_range: tuple[float, float] = (0.1, 0.5),
    generator: torch.Generator | None = None,
    mask_generator: BlockMaskGenerator | None = None,
) -> Tensor:
    """``[batch_size, h*w]`` masks: ``round(batch_size·p)`` images masked, in shuffled positions.

    Masked image ``i`` of ``n`` draws its ratio uniformly in the ``i``-th of ``n`` equal bins of
    ``ratio_range`` and asks the block generator for ``int(ratio · h·w)`` patches (DINOv2 collate).
    """
    generator_2d = mask_generator or BlockMaskGenerator(grid_hw)
    num_patches = grid_hw[0] * grid_hw[1]
    n_masked = int(round(batch_size * mask_probability))
    bins = torch.linspace(ratio_range[0], ratio_range[1], n_masked + 1).tolist()
    masks = torch.zeros(batch_size, num_patches, dtype=torch.bool)
    order = torch.randperm(batch_size, generator=generator)
    for i in range(n_masked):
        ratio = _uniform(bins[i], bins[i + 1], generator)
        masks[order[i]] = generator_2d(int(num_patches * ratio), generator=generator).flatten()
    return masks


def masks_weight(masks: Tensor) -> Tensor:
    """``[M]`` weights ``1 / count(image)`` of the masked patches, ordered as ``masks.flatten().nonzero()``."""
    flat = masks.flatten(1)
    per_image = 1.0 / flat.sum(dim=1, keepdim=True).clamp(min=1).float()
    return per_image.expand_as(flat)[flat]
