"""Batched multi-crop augmentation on image tensors (the fast path for small images).

Same recipe as the per-image PIL pipeline (DINO Sec. 3.1 / App. D; DINOv2 Sec. 4): two global and
``num_local`` local random-resized crops with flips, brightness/contrast/saturation jitter, grayscale,
Gaussian blur and solarisation, but computed for a whole batch at once: one ``affine_grid`` +
``grid_sample`` per crop size, photometric changes as per-image tensor arithmetic, blur as a grouped
separable convolution. All randomness comes from the ``generator`` argument, so a step is repeatable.

Data parallel runs: each process holds rows ``rank::world`` of the global batch (``BatchRows``). Every
random draw is made for the whole global batch, in the same order as a single process would, and only
this process's rows are kept, so an image gets the same crop box, flip, jitter, blur and solarisation
whatever the number of processes (the generator is seeded identically on every rank).

Example::

    augment = TensorMultiCrop(CropConfig(global_size=28, local_size=12, num_local=4))
    crops = augment(uint8_images, generator=torch.Generator().manual_seed(0))
    crops.global_crops.shape, crops.local_crops.shape  # [2B, 3, 28, 28], [4B, 3, 12, 12]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dinolab.pretrain.models.vit import IMAGENET_MEAN, IMAGENET_STD
from dinolab.pretrain.train.config import CropConfig


@dataclass
class MultiCropBatch:
    """Crops grouped crop-major: ``global_crops[i * B:(i + 1) * B]`` is global crop ``i`` of every image."""

    global_crops: Tensor  # [2B, 3, G, G], normalised
    local_crops: Tensor | None  # [num_local * B, 3, L, L], normalised (None without local crops)
    batch_size: int


@dataclass(frozen=True)
class BatchRows:
    """The rows of a global batch of ``total`` images held here: positions ``start::stride``.

    ``BatchRows(B)`` is a whole batch (single process). Under data parallelism rank ``r`` of ``W``
    holds ``BatchRows(W * B_local, r, W)``, matching ``pretrain.train.data.epoch_order``.
    """

    total: int
    start: int = 0
    stride: int = 1

    @property
    def is_whole(self) -> bool:
        return self.start == 0 and self.stride == 1

    @property
    def count(self) -> int:
        return len(range(self.start, self.total, self.stride))

    def repeat(self, times: int) -> "BatchRows":
        """The rows of ``times`` crop-major copies of the batch (``[copy 0 of every image, copy 1, ...]``).

        With ``total`` a multiple of ``stride``, copy ``i`` of global row ``start + stride·j`` sits at
        ``start + stride·(i·count + j)``: the same start and stride over ``times · total`` rows.
        """
        if not self.is_whole and self.total % self.stride:
            raise ValueError(f"a global batch of {self.total} does not split into {self.stride} equal shares")
        return BatchRows(self.total * times, self.start, self.stride)

    def select(self, values: Tensor) -> Tensor:
        """This process's entries of per-row ``values`` drawn for the global batch."""
        return values if self.is_whole else values[self.start :: self.stride]


def _as_rows(rows: BatchRows | None, batch: int) -> BatchRows:
    rows = rows or BatchRows(batch)
    if rows.count != batch:
        raise ValueError(f"{batch} images but {rows} selects {rows.count} rows")
    return rows


def _rand(rows: BatchRows, generator: torch.Generator) -> Tensor:
    return rows.select(torch.rand(rows.total, generator=generator))


def _uniform(low: float, high: float, rows: BatchRows, generator: torch.Generator) -> Tensor:
    return _rand(rows, generator) * (high - low) + low


def _bernoulli(probability: float, rows: BatchRows, generator: torch.Generator) -> Tensor:
    return _rand(rows, generator) < probability


def random_resized_crop(
    images: Tensor,
    output_size: int,
    scale: tuple[float, float],
    flip_prob: float,
    generator: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    rows: BatchRows | None = None,
) -> Tensor:
    """One random crop per image (area fraction in ``scale``, aspect in ``ratio``), resized, maybe flipped.

    ``images`` is float ``[B, C, H, W]``; the crop box is expressed as an affine map of the
    normalised [-1, 1] image square and sampled bilinearly. ``rows``: see :class:`BatchRows`.
    """
    batch = images.shape[0]
    rows = _as_rows(rows, batch)
    area = _uniform(*scale, rows, generator)
    log_ratio = _uniform(math.log(ratio[0]), math.log(ratio[1]), rows, generator)
    aspect = log_ratio.exp()
    width = (area * aspect).sqrt().clamp(max=1.0)  # fraction of the image side
    height = (area / aspect).sqrt().clamp(max=1.0)
    centre_x = (_rand(rows, generator) * 2 - 1) * (1 - width)
    centre_y = (_rand(rows, generator) * 2 - 1) * (1 - height)
    flip = torch.where(_bernoulli(flip_prob, rows, generator), -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = centre_y
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, [batch, images.shape[1], output_size, output_size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(images: Tensor) -> Tensor:
    if images.shape[1] == 1:
        return images
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def color_jitter(
    images: Tensor, brightness: float, contrast: float, saturation: float, probability: float,
    generator: torch.Generator, rows: BatchRows | None = None,
) -> Tensor:
    """Brightness, contrast and saturation factors in ``[1 - s, 1 + s]`` on a random subset of images."""
    rows = _as_rows(rows, images.shape[0])
    apply = _bernoulli(probability, rows, generator)

    def factors(strength: float) -> Tensor:
        values = _uniform(1 - strength, 1 + strength, rows, generator)
        return torch.where(apply, values, 1.0).to(images).view(-1, 1, 1, 1)

    brightness_f, contrast_f, saturation_f = factors(brightness), factors(contrast), factors(saturation)
    images = (images * brightness_f).clamp(0, 1)
    mean = _gray(images).mean(dim=(1, 2, 3), keepdim=True)
    images = ((images - mean) * contrast_f + mean).clamp(0, 1)
    if images.shape[1] == 3:
        images = ((images - _gray(images)) * saturation_f + _gray(images)).clamp(0, 1)
    return images


def random_grayscale(images: Tensor, probability: float, generator: torch.Generator,
                     rows: BatchRows | None = None) -> Tensor:
    rows = _as_rows(rows, images.shape[0])
    apply = _bernoulli(probability, rows, generator).to(images.device).view(-1, 1, 1, 1)
    if images.shape[1] == 1:
        return images
    return torch.where(apply, _gray(images).expand_as(images), images)


def gaussian_blur(
    images: Tensor, probability: float, sigma_range: tuple[float, float], generator: torch.Generator,
    rows: BatchRows | None = None,
) -> Tensor:
    """Separable Gaussian blur with a per-image sigma, applied to a random subset of images."""
    batch, channels, height, width = images.shape
    rows = _as_rows(rows, batch)
    apply = _bernoulli(probability, rows, generator)
    sigma = _uniform(*sigma_range, rows, generator)
    if not bool(apply.any()):
        return images
    radius = max(1, min(int(math.ceil(3 * sigma_range[1])), (min(height, width) - 1) // 2))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    kernels = (kernels / kernels.sum(1, keepdim=True)).to(images)  # [B, K]
    kernels = kernels.repeat_interleave(channels, dim=0)  # one kernel per (image, channel)
    flat = images.reshape(1, batch * channels, height, width)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernels.view(-1, 1, 1, 2 * radius + 1), groups=batch * channels)
    flat = F.conv2d(flat, kernels.view(-1, 1, 2 * radius + 1, 1), groups=batch * channels)
    blurred = flat.view(batch, channels, height, width)
    return torch.where(apply.to(images.device).view(-1, 1, 1, 1), blurred, images)


def solarize(images: Tensor, probability: float, generator: torch.Generator,
             rows: BatchRows | None = None) -> Tensor:
    """Invert pixels above 0.5 (threshold 128 of 255) on a random subset of images."""
    rows = _as_rows(rows, images.shape[0])
    apply = _bernoulli(probability, rows, generator).to(images.device).view(-1, 1, 1, 1)
    return torch.where(apply & (images >= 0.5), 1.0 - images, images)


class TensorMultiCrop:
    """Multi-crop augmentation of a uint8 or [0, 1] float batch ``[B, C, H, W]`` (C = 1 or 3)."""

    def __init__(
        self,
        crops: CropConfig,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        self.crops = crops
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def _photometric(self, images: Tensor, blur_prob: float, solarize_prob: float,
                     generator: torch.Generator, rows: BatchRows) -> Tensor:
        c = self.crops
        images = color_jitter(images, c.brightness, c.contrast, c.saturation, c.jitter_prob, generator, rows)
        images = random_grayscale(images, c.grayscale_prob, generator, rows)
        images = gaussian_blur(images, blur_prob, c.blur_sigma, generator, rows)
        if solarize_prob > 0:
            images = solarize(images, solarize_prob, generator, rows)
        return images

    def _normalise(self, images: Tensor) -> Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return (images - self.mean.to(images)) / self.std.to(images)

    def __call__(self, images: Tensor, generator: torch.Generator, rows: BatchRows | None = None) -> MultiCropBatch:
        """Crops of ``images``; ``rows`` says which rows of the global batch they are (default: all)."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images [B, 1 or 3, H, W], got {tuple(images.shape)}")
        c = self.crops
        rows = _as_rows(rows, images.shape[0])
        pixels = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        globals_ = []
        for index in range(2):
            crop = random_resized_crop(pixels, c.global_size, c.global_scale, c.flip_prob, generator, rows=rows)
            solarize_prob = c.solarize_prob if index == 1 else 0.0
            crop = self._photometric(crop, c.blur_prob_global[index], solarize_prob, generator, rows)
            globals_.append(self._normalise(crop))
        local_crops = None
        if c.num_local > 0:
            repeated = pixels.repeat(c.num_local, 1, 1, 1)  # crop-major: local i of every image
            local_rows = rows.repeat(c.num_local)
            crop = random_resized_crop(repeated, c.local_size, c.local_scale, c.flip_prob, generator,
                                       rows=local_rows)
            crop = self._photometric(crop, c.blur_prob_local, 0.0, generator, local_rows)
            local_crops = self._normalise(crop)
        return MultiCropBatch(torch.cat(globals_), local_crops, images.shape[0])
