"""Evaluation preprocessing (DINOv2 linear/k-NN protocol) with torchvision transforms v2.

Resize the shorter side to ``resize_size`` (bicubic, antialiased), centre-crop ``input_size``, scale to
float in ``[0, 1]`` and normalise with the model's mean/std. The same transform accepts a PIL image
(resized by Pillow, as in the released evaluation code), a uint8 tensor ``[C, H, W]`` or a batch
``[B, C, H, W]`` (resized by torch)::

    transform = eval_transform(model.preprocessing, size=448, patch_size=model.patch_size)
    x = transform(load_image("cat.jpg"))              # float [3, 448, 448]
    small = eval_transform(model.preprocessing, size=28, resize_size=28, patch_size=4)  # Fashion-MNIST
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from dinolab.pretrain.models.vit import Preprocessing

_INTERPOLATIONS = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


def eval_sizes(
    preprocessing: Preprocessing,
    size: int | None = None,
    resize_size: int | None = None,
    patch_size: int | None = None,
) -> tuple[int, int]:
    """``(resize_size, input_size)``: a ``size`` override keeps the preset's resize/crop ratio (256/224).

    ``patch_size`` checks that the crop is a multiple of the backbone's patch size.
    """
    input_size = preprocessing.input_size if size is None else size
    if patch_size is not None and input_size % patch_size:
        lower = input_size // patch_size * patch_size
        raise ValueError(
            f"input size {input_size} is not a multiple of the patch size {patch_size}; "
            f"use e.g. {max(lower, patch_size)} or {lower + patch_size}"
        )
    if resize_size is None:
        ratio = preprocessing.resize_size / preprocessing.input_size
        resize_size = preprocessing.resize_size if size is None else round(input_size * ratio)
    if input_size < 1 or resize_size < input_size:
        raise ValueError(
            f"resize size {resize_size} must be at least the crop size {input_size} (and both positive)"
        )
    return resize_size, input_size


def eval_transform(
    preprocessing: Preprocessing,
    *,
    size: int | None = None,
    resize_size: int | None = None,
    patch_size: int | None = None,
) -> v2.Compose:
    """Deterministic evaluation transform; ``size`` overrides the crop (e.g. 448), ``resize_size`` the resize.

    ``patch_size`` checks that the crop is a multiple of the backbone's patch size.
    """
    resize_size, input_size = eval_sizes(preprocessing, size, resize_size, patch_size)
    if preprocessing.interpolation not in _INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {preprocessing.interpolation!r}; use {sorted(_INTERPOLATIONS)}")
    return v2.Compose(
        [
            v2.Resize(resize_size, interpolation=_INTERPOLATIONS[preprocessing.interpolation], antialias=True),
            v2.CenterCrop(input_size),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(preprocessing.mean), std=list(preprocessing.std)),
        ]
    )
