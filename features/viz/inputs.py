"""What the picture tools start from: RGB images sized to the patch grid, and a backbone.

Images are decoded through :func:`load_rgb` alone (the project's robust decoder underneath). Sizes are
snapped to multiples of the patch size, keeping the aspect ratio::

    image = load_rgb("cat.jpg")                   # uint8 [H, W, 3]
    batch = image_to_tensor(image, model, 224)     # float [1, 3, H', W'], H', W' multiples of 14
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dinolab.pretrain.models import VisionTransformer

MAX_SIDE_RATIO = 4.0  # longer side at most this many times the requested shorter side


class ImageInputError(ValueError):
    """An image or mask file that cannot be used (missing, corrupt, wrong shape)."""


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB ``[H, W, 3]`` through :func:`pretrain.data.images.load_image`.

    Grayscale, palette, 16-bit, alpha and EXIF rotation are handled there; problems (missing, corrupt,
    tiny, decompression bomb) become :class:`ImageInputError`.
    """
    from dinolab.pretrain.data.images import ImageDecodeError, load_image

    try:
        return np.asarray(load_image(path), dtype=np.uint8).copy()
    except ImageDecodeError as error:
        raise ImageInputError(str(error)) from error


def load_mask(path: str | Path) -> np.ndarray:
    """Read a binary mask image or ``.npy`` file → bool ``[H, W]``; anything but two values is an error."""
    path = Path(path)
    if path.suffix == ".npy":
        if not path.is_file():
            raise ImageInputError(f"{path}: no such mask file")
        array = np.load(path, allow_pickle=False)
    else:
        from PIL import Image, UnidentifiedImageError

        if not path.is_file():
            raise ImageInputError(f"{path}: no such mask file")
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("L") if image.mode in ("RGB", "RGBA", "LA", "P") else image)
        except (UnidentifiedImageError, OSError) as error:
            raise ImageInputError(f"{path}: cannot decode mask ({error})") from error
    return binarize_mask(array, str(path))


def binarize_mask(array: np.ndarray, name: str = "mask") -> np.ndarray:
    """A 2-D array with at most two distinct values → bool (the larger value is foreground)."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ImageInputError(f"{name}: a mask must be 2-D, got shape {array.shape}")
    values = np.unique(array)
    if len(values) > 2:
        raise ImageInputError(
            f"{name}: mask is not binary ({len(values)} distinct values, e.g. {values[:5].tolist()}); "
            "save it with two values only (0 = background, anything else = foreground)"
        )
    if len(values) == 1:
        return np.full(array.shape, bool(values[0]))
    return array == values[1]


def snapped_size(height: int, width: int, short_side: int, patch_size: int) -> tuple[int, int]:
    """Resize target keeping aspect: shorter side ≈ ``short_side``, both sides multiples of the patch."""
    if min(height, width) < 1:
        raise ImageInputError(f"image of size {height}x{width} is empty")
    if max(height, width) / min(height, width) > MAX_SIDE_RATIO * 4:
        raise ImageInputError(f"image of size {height}x{width} is too elongated to picture")
    scale = short_side / min(height, width)
    new_h = max(patch_size, round(height * scale / patch_size) * patch_size)
    new_w = max(patch_size, round(width * scale / patch_size) * patch_size)
    limit = int(MAX_SIDE_RATIO * short_side) // patch_size * patch_size
    return min(new_h, max(limit, patch_size)), min(new_w, max(limit, patch_size))


def image_to_tensor(image: np.ndarray, model: VisionTransformer, short_side: int | None = None) -> Tensor:
    """uint8 RGB ``[H, W, 3]`` → normalised ``[1, 3, H', W']`` on the model's device (see module doc)."""
    pre = model.preprocessing
    short_side = short_side or pre.input_size
    if min(image.shape[:2]) < 8:
        warnings.warn(f"image of size {image.shape[0]}x{image.shape[1]} is tiny; upsampling it", stacklevel=2)
    size = snapped_size(image.shape[0], image.shape[1], short_side, model.patch_size)
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    device = next(model.parameters()).device
    return ((pixels.clamp(0, 1) - mean) / std).to(device)


def resize_mask(mask: np.ndarray, size: tuple[int, int], name: str = "mask") -> np.ndarray:
    """Bool mask → ``size`` (nearest); warn on a resize, refuse a different aspect ratio (> 2 %)."""
    if mask.shape == size:
        return mask
    ratio_mask = mask.shape[1] / mask.shape[0]
    ratio_image = size[1] / size[0]
    if abs(ratio_mask / ratio_image - 1) > 0.02:
        raise ImageInputError(
            f"{name}: mask is {mask.shape[0]}x{mask.shape[1]} but its image is {size[0]}x{size[1]} "
            "(different aspect ratio); give the mask of this image"
        )
    warnings.warn(f"{name}: resizing mask {mask.shape} to the image size {size}", stacklevel=2)
    resized = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=size, mode="nearest")
    return resized[0, 0].numpy() > 0.5


def load_model(weights: str | None, arch: str | None) -> VisionTransformer:
    """The backbone named by ``--weights`` (checkpoint file/dir/name) or ``--arch`` (random), eval mode."""
    if (weights is None) == (arch is None):
        raise ValueError("give exactly one of --weights (a checkpoint) or --arch (random weights)")
    if weights is not None:
        from dinolab.pretrain.checkpoints import load_backbone

        model = load_backbone(weights)
    else:
        from dinolab.pretrain.models import build_vit

        model = build_vit(arch)
    return model.eval()
