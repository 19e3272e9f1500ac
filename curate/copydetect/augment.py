"""The SSCD augmentation set (Pizzi et al. 2022, "ADVANCED" + mixup/cutmix), on PIL images.

Order and probabilities follow the paper: h-flip; 90/180/270° rotation p 0.05; text overlay p 0.1 (font
0.1-0.3 of the short side, opacity 0.1-1); emoji overlay p 0.2 (size 0.1-0.5, opacity 0.7-1); free
rotation p 0.05; random resized crop; colour jitter (0.8, 0.8, 0.8, 0.2) p 0.8; grayscale p 0.2;
Gaussian blur radius U[1, 5] p 0.5; JPEG quality U[0, 100] p 0.2. Mixup and cutmix act on a batch
(:func:`mix_batch`). Fonts and emoji glyphs come from Debian packages (``fonts-dejavu-core``,
``fonts-noto-color-emoji``; ``scripts/setup.sh`` installs them)::

    augment = SSCDAugment(size=160)
    view = augment(image, rng)          # PIL image -> [3, 160, 160] float tensor in [0, 1]
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps
from torch import Tensor

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
TEXT_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")
EMOJI_FONT = "NotoColorEmoji.ttf"
EMOJI_SIZE = 109  # Noto Color Emoji is a bitmap font with this one size
EMOJI = tuple(chr(c) for c in (*range(0x1F600, 0x1F640), *range(0x1F400, 0x1F43F), *range(0x1F330, 0x1F37F)))
WORDS = ("LOL", "when you", "me irl", "Breaking", "2021", "so true", "#nofilter", "WOW", "caption", "meme", "?!")


class MissingFontError(RuntimeError):
    """A font the overlays need is not installed; the message names the Debian package."""


@lru_cache(maxsize=None)
def font_path(name: str) -> Path:
    for root in FONT_DIRS:
        for path in root.rglob(name) if root.is_dir() else ():
            return path
    package = "fonts-noto-color-emoji" if name == EMOJI_FONT else "fonts-dejavu-core"
    raise MissingFontError(f"font {name} not found: install the Debian package {package} (scripts/setup.sh)")


@lru_cache(maxsize=64)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path(name)), size)


@lru_cache(maxsize=512)
def emoji_glyph(char: str) -> Image.Image:
    """The RGBA bitmap of one emoji, cropped to its ink."""
    canvas = Image.new("RGBA", (EMOJI_SIZE + 40, EMOJI_SIZE + 40), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((8, 8), char, font=_font(EMOJI_FONT, EMOJI_SIZE), embedded_color=True)
    box = canvas.getbbox()
    return canvas.crop(box) if box else canvas


def paste_emoji(image: Image.Image, char: str, size: float, opacity: float, xy: tuple[float, float]) -> Image.Image:
    """``char`` pasted at ``size`` (fraction of the short side), ``opacity``, top-left at fractions ``xy``."""
    image = image.convert("RGB")
    side = max(4, int(size * min(image.size)))
    glyph = emoji_glyph(char).resize((side, side), Image.Resampling.BILINEAR)
    alpha = glyph.getchannel("A").point(lambda a: int(a * opacity))
    x = int(xy[0] * max(1, image.width - side))
    y = int(xy[1] * max(1, image.height - side))
    image.paste(glyph.convert("RGB"), (x, y), alpha)
    return image


def draw_text(image: Image.Image, text: str, size: float, opacity: float, xy: tuple[float, float],
              colour: tuple[int, int, int], font: str = TEXT_FONTS[0]) -> Image.Image:
    """``text`` in ``font`` at ``size`` (fraction of the short side) and ``opacity``, top-left at fractions ``xy``."""
    image = image.convert("RGB")
    pixels = max(6, int(size * min(image.size)))
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    face = _font(font, pixels)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=face)
    x = int(xy[0] * max(1, image.width - (right - left)))
    y = int(xy[1] * max(1, image.height - (bottom - top)))
    draw.text((x - left, y - top), text, font=face, fill=(*colour, int(255 * opacity)))
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=int(np.clip(quality, 1, 95)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def random_resized_crop(image: Image.Image, rng: np.random.Generator, size: int,
                        scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Image.Image:
    width, height = image.size
    for _ in range(10):
        area = width * height * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w, h = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x, y = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
            return image.resize((size, size), Image.Resampling.BILINEAR, box=(x, y, x + w, y + h))
    return image.resize((size, size), Image.Resampling.BILINEAR)


def colour_jitter(image: Image.Image, rng: np.random.Generator, strength=(0.8, 0.8, 0.8, 0.2)) -> Image.Image:
    brightness, contrast, saturation, hue = strength
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(1 - brightness, 1 + brightness))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(1 - contrast, 1 + contrast))
    image = ImageEnhance.Color(image).enhance(rng.uniform(1 - saturation, 1 + saturation))
    shift = int(rng.uniform(-hue, hue) * 255)
    h, s, v = image.convert("HSV").split()
    h = h.point(lambda value: (value + shift) % 256)
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def to_tensor(image: Image.Image) -> Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


@dataclass(frozen=True)
class SSCDAugment:
    """One strongly augmented view, SSCD's ADVANCED set (probabilities as in the module docstring)."""

    size: int = 160
    crop_scale: tuple[float, float] = (0.08, 1.0)

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Tensor:
        image = image.convert("RGB")
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        if rng.random() < 0.05:
            image = image.rotate(int(rng.integers(1, 4)) * 90, expand=True)
        if rng.random() < 0.1:
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            image = draw_text(image, str(rng.choice(WORDS)), rng.uniform(0.1, 0.3), rng.uniform(0.1, 1.0),
                              tuple(rng.random(2)), colour, str(rng.choice(TEXT_FONTS)))
        if rng.random() < 0.2:
            image = paste_emoji(image, str(rng.choice(EMOJI)), rng.uniform(0.1, 0.5), rng.uniform(0.7, 1.0),
                                tuple(rng.random(2)))
        if rng.random() < 0.05:
            image = image.rotate(rng.uniform(-90, 90), resample=Image.Resampling.BILINEAR)
        image = random_resized_crop(image, rng, self.size, self.crop_scale)
        if rng.random() < 0.8:
            image = colour_jitter(image, rng)
        if rng.random() < 0.2:
            image = ImageOps.grayscale(image).convert("RGB")
        if rng.random() < 0.5:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(1, 5) * self.size / 224))
        if rng.random() < 0.2:
            image = jpeg(image, int(rng.integers(1, 101)))
        return to_tensor(image)


def mix_batch(views: Tensor, rng: np.random.Generator, mixup: float = 0.025, cutmix: float = 0.025
              ) -> tuple[Tensor, np.ndarray]:
    """Mixup / cutmix a fraction of the batch with another view; returns the views and, per row, its partner.

    ``partner[i] = j`` means row ``i`` now holds part of image ``j`` too (a positive for both, as in SSCD);
    ``-1`` when row ``i`` is untouched.
    """
    views = views.clone()
    count = len(views)
    partner = np.full(count, -1, dtype=np.int64)
    for row in range(count):
        draw = rng.random()
        if draw >= mixup + cutmix or count < 2:
            continue
        other = int(rng.integers(0, count - 1))
        other += other >= row
        partner[row] = other
        if draw < mixup:
            weight = float(rng.uniform(0.3, 0.7))
            views[row] = weight * views[row] + (1 - weight) * views[other]
        else:
            _, height, width = views.shape[1:]
            h, w = int(height * rng.uniform(0.3, 0.6)), int(width * rng.uniform(0.3, 0.6))
            y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            views[row, :, y : y + h, x : x + w] = views[other, :, y : y + h, x : x + w]
    return views, partner
