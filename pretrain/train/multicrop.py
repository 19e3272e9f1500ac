"""Multi-crop augmentation of the DINO / DINOv2 recipe (DINO §3.1 and appendix D; DINOv2 §4).

Each image yields two global crops (scale ``(0.32, 1)``, 224 px) and ``n_local`` local crops
(scale ``(0.05, 0.32)``, 98 px for patch 14). Every crop gets a bicubic random-resized crop, a
horizontal flip (p 0.5), colour jitter ``(0.4, 0.4, 0.2, 0.1)`` (p 0.8) and grayscale (p 0.2). Then:

* global crop 1: Gaussian blur (kernel 9, σ ∈ [0.1, 2]) with p 1.0;
* global crop 2: blur with p 0.1 and solarisation (threshold 128) with p 0.2;
* local crops: blur with p 0.5.

The released DINOv2 code hands ``1 − p`` to its random-apply wrapper, so its *effective* blur
probabilities are 0.0 / 0.9 / 0.5; ``released_blur_bug=True`` reproduces that.

Example::

    augment = MultiCropAugmentation(global_size=224, local_size=98, n_local=8)
    crops = augment(pil_image)          # {"global_crops": [2 × [3,224,224]], "local_crops": [8 × [3,98,98]]}
    batch = collate_multicrop([(crops, 0), (augment(other), 1)])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import InterpolationMode, v2

from dinolab.pretrain.models.vit import IMAGENET_MEAN, IMAGENET_STD


def _high_bit_depth_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float grayscale → 8-bit ``L`` (16-bit by its range, others min-max)."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        scaled = values / 257.0
    else:
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _to_rgb(image: Image.Image | Tensor) -> Image.Image | Tensor:
    """PIL (any mode) → RGB PIL (the fast kernels); uint8 ``[C, H, W]`` (C = 1, 3, 4) → RGB uint8 tensor."""
    if isinstance(image, Image.Image):
        if image.mode.startswith("I") or image.mode == "F":  # PIL's own convert would clip at 255
            image = _high_bit_depth_to_8bit(image)
        return image if image.mode == "RGB" else image.convert("RGB")
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"expected a uint8 [C, H, W] tensor with 1, 3 or 4 channels, got {image.dtype} {tuple(image.shape)}")
    if image.shape[0] == 1:
        return image.expand(3, -1, -1).contiguous()
    return image[:3]


class MultiCropAugmentation:
    """Callable ``image → {"global_crops": [2 tensors], "local_crops": [n_local tensors]}`` (normalised fp32)."""

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 98,
        n_local: int = 8,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
        blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5),
        solarize_p: float = 0.2,
        released_blur_bug: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        self.n_local = n_local
        self.blur_p = tuple(1.0 - p for p in blur_p) if released_blur_bug else tuple(blur_p)
        color = [
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
        ]
        finish = [
            v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std)),
            v2.ToPureTensor(),
        ]

        def crop(size: int, scale: tuple[float, float]) -> list[v2.Transform]:
            return [
                v2.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC, antialias=True),
                v2.RandomHorizontalFlip(p=0.5),
            ]

        def blur(p: float) -> v2.Transform:
            return v2.RandomApply([v2.GaussianBlur(kernel_size=9, sigma=blur_sigma)], p=p)

        self.global_transform_1 = v2.Compose([*crop(global_size, global_scale), *color, blur(self.blur_p[0]), *finish])
        self.global_transform_2 = v2.Compose(
            [*crop(global_size, global_scale), *color, blur(self.blur_p[1]),
             v2.RandomSolarize(threshold=128, p=solarize_p), *finish]
        )
        self.local_transform = v2.Compose([*crop(local_size, local_scale), *color, blur(self.blur_p[2]), *finish])

    def __call__(self, image: Image.Image | Tensor) -> dict[str, list[Tensor]]:
        rgb = _to_rgb(image)
        return {
            "global_crops": [self.global_transform_1(rgb), self.global_transform_2(rgb)],
            "local_crops": [self.local_transform(rgb) for _ in range(self.n_local)],
        }


def collate_multicrop(samples: Sequence[Any]) -> dict[str, Any]:
    """Stack ``[(crops, label), ...]`` (or bare crop dicts) crop-major for the training step.

    ``global_crops`` is ``[2B, 3, G, G]`` (all first crops, then all second crops), ``local_crops``
    ``[n·B, 3, L, L]`` (local crop 0 of every image, then crop 1, ...; an empty ``[0]`` tensor when
    ``n = 0``), and ``labels`` a ``[B]`` tensor for integer labels, otherwise the list as given.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    has_labels = isinstance(samples[0], (tuple, list))
    crops = [s[0] if has_labels else s for s in samples]
    n_global, n_local = len(crops[0]["global_crops"]), len(crops[0]["local_crops"])
    global_crops = torch.stack([c["global_crops"][i] for i in range(n_global) for c in crops])
    local_crops = (
        torch.stack([c["local_crops"][i] for i in range(n_local) for c in crops]) if n_local else torch.empty(0)
    )
    batch: dict[str, Any] = {"global_crops": global_crops, "local_crops": local_crops}
    if has_labels:
        labels = [s[1] for s in samples]
        batch["labels"] = torch.tensor(labels) if all(isinstance(y, int) for y in labels) else labels
    return batch
