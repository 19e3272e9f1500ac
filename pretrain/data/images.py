"""Robust image decoding: every image the project reads goes through :func:`decode_image` or :func:`load_image`.

Whatever the file holds (grayscale, palette, RGBA, CMYK, 16-bit ``I;16``/``I`` PNG or TIFF, float ``F``
TIFF, an EXIF-rotated JPEG) comes back as an upright 8-bit RGB :class:`PIL.Image.Image`. Anything that
cannot be used (missing, unreadable, corrupt, truncated, too small, a decompression bomb) raises
:class:`ImageDecodeError`, so callers can skip the file and count it::

    try:
        image = load_image("photo.jpg", max_side=1024)
        decoded = decode_image(data, "shard-0001.tar/key.jpg")  # .image, .width, .height, .format
    except ImageDecodeError as error:
        print(f"skipped {error.path}: {error.reason}")
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
"""File suffixes (compared lower-case) that the dataset classes treat as images."""

DEFAULT_MAX_PIXELS = 89_478_485
"""Largest ``width × height`` decoded by default (Pillow's own bomb limit, about 300 MB of RGB)."""

DEFAULT_MIN_SIDE = 8
"""Images whose shorter side is below this are refused as too small to carry content."""

BACKGROUND = (255, 255, 255)
"""Colour that transparent pixels are composited onto."""


class ImageDecodeError(Exception):
    """An image that cannot be used; ``path`` (the file or other source) and ``reason`` say which and why.

    ``filtered`` is True when the image decodes but is refused by policy (smaller than ``min_side``), which
    ingest records as status ``filtered`` rather than ``error``.
    """

    def __init__(self, path: str | Path, reason: str, filtered: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
        self.filtered = filtered

    def __reduce__(self) -> tuple:  # picklable across worker processes
        return (type(self), (self.path, self.reason, self.filtered))


@dataclass(frozen=True)
class DecodedImage:
    """An upright 8-bit RGB ``image`` (possibly downsized), the upright ORIGINAL ``width`` × ``height``
    (after EXIF orientation, before any downsizing) and Pillow's ``format`` name (``"JPEG"``, ``"PNG"``, ...)."""

    image: Image.Image
    width: int
    height: int
    format: str


_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that rotate by 90 degrees


def is_image_file(path: str | Path) -> bool:
    """Whether the suffix of ``path`` is one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def load_image(
    path: str | Path,
    *,
    max_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> Image.Image:
    """Decode the file ``path`` to an upright 8-bit RGB image (:func:`decode_image` on its bytes)."""
    path = Path(path)
    if not path.is_file():
        raise ImageDecodeError(path, "no such file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageDecodeError(path, f"unreadable file ({_one_line(error)})") from error
    return decode_image(data, str(path), max_side=max_side, max_pixels=max_pixels, min_side=min_side).image


def decode_image(
    data: bytes,
    source: str,
    *,
    max_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> DecodedImage:
    """Decode encoded image ``data`` (``source`` names it in errors) to a :class:`DecodedImage`.

    ``max_side`` downsizes larger images on load (JPEGs decode directly at a reduced scale through
    :meth:`PIL.Image.Image.draft`, so huge photos never materialise at full size). ``max_pixels`` refuses
    decompression bombs before any pixel is decoded; it applies to this call only (Pillow's global limit
    is left untouched, and still caps it at twice its value). ``min_side`` refuses tiny images
    (``filtered=True``). Animated images (GIF, WebP) and multi-page TIFFs give their first frame.
    """
    if not data:
        raise ImageDecodeError(source, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # in memory: nothing to close
            width, height = image.size
            file_format = image.format or "unknown"
            _check_size(source, width, height, max_pixels, min_side)
            if max_side is not None and file_format in _DRAFT_FORMATS:
                scale = max_side / max(width, height)  # the final size, so the DCT scale is as small as it can be
                image.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))
            image.load()
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
            if orientation in _SWAPPING_ORIENTATIONS:
                width, height = height, width
            if orientation not in (None, 1):  # exif_transpose copies even upright images: skip it then
                image = ImageOps.exif_transpose(image)
            rgb = to_rgb(image)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(source, f"decompression bomb refused ({_one_line(error)})") from error
    except UnidentifiedImageError:
        raise ImageDecodeError(source, "not an image file Pillow can identify") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # truncated or corrupt data
        raise ImageDecodeError(source, f"corrupt or truncated image ({_one_line(error)})") from error
    except Exception as error:  # noqa: BLE001 - hostile data can trip any decoder path
        raise ImageDecodeError(source, f"undecodable image ({type(error).__name__}: {_one_line(error)})") from error
    if max_side is not None and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return DecodedImage(rgb, width, height, file_format)


def _check_size(source: str, width: int, height: int, max_pixels: int, min_side: int) -> None:
    if width * height > max_pixels:
        raise ImageDecodeError(
            source,
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(possible decompression bomb; raise max_pixels if the file is trusted)",
        )
    if min(width, height) < min_side:
        raise ImageDecodeError(source, f"image is {width}x{height}, smaller than {min_side} px", filtered=True)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB.

    Integer images wider than 8 bits are scaled to their bit depth (``I;16`` divides by 257; ``I``
    holding values up to 65535 is treated as 16-bit, wider ranges are min-max scaled); float ``F``
    images in ``[0, 1]`` are multiplied by 255, other ranges min-max scaled. Transparency is composited
    onto :data:`BACKGROUND`.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        gray = Image.fromarray(_high_depth_to_uint8(np.asarray(image)))
        return gray.convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_uint8(array: np.ndarray) -> np.ndarray:
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if np.issubdtype(array.dtype, np.floating):
        scaled = values * 255.0 if low >= 0.0 and high <= 1.0 else _min_max(values, low, high)
    elif low >= 0 and high <= 255 and array.dtype.itemsize == 1:
        scaled = values
    elif low >= 0 and high <= 65535:
        scaled = values / 257.0
    else:
        scaled = _min_max(values, low, high)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _min_max(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return (values - low) / max(high - low, 1e-12) * 255.0


def demo_images(names: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")) -> dict[str, Image.Image]:
    """scikit-image's bundled photos as RGB images (no download): ``{"astronaut": <PIL.Image>, ...}``.

    ``"motorcycle"`` is the left view of ``stereo_motorcycle``; grayscale ones (``camera``) become RGB.
    """
    try:
        import skimage.data
    except ImportError as error:  # optional dependency (extra "demo")
        raise ImportError("demo images need scikit-image: pip install scikit-image") from error
    images = {}
    for name in names:
        if name == "motorcycle":
            array = skimage.data.stereo_motorcycle()[0]
        elif hasattr(skimage.data, name):
            array = getattr(skimage.data, name)()
        else:
            raise ValueError(f"unknown scikit-image demo image {name!r}")
        images[name] = to_rgb(Image.fromarray(np.asarray(array)))
    return images
