"""Copy detection that does not trust shared templates or flat content: frames, gradients, crops, VLAD."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageOps

from dinolab.curate.copydetect.augment import TEXT_FONTS, _font
from dinolab.curate.copydetect.features import image_features
from dinolab.curate.copydetect.local import describe
from dinolab.curate.copydetect.pipeline import copy_duplicates_table
from dinolab.curate.copydetect.templates import bursty_descriptors, content_features
from dinolab.curate.copydetect.vlad import VladModel, vlad_candidates
from dinolab.schemas.config import DedupConfig

PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "immunohistochemistry", "clock", "brick")


def _photo(name: str, size: int = 256) -> Image.Image:
    import skimage.data

    return ImageOps.fit(Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB"), (size, size))


def _gradient(colours: tuple, angle: float, shift: float, size: tuple[int, int] = (320, 256)) -> Image.Image:
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = ((xs / w - 0.5) * np.cos(angle) + (ys / h - 0.5) * np.sin(angle) + 0.5 + shift).clip(0, 1)[..., None]
    a, b = (np.array(c, np.float32) for c in colours)
    return Image.fromarray((a * (1 - t) + b * t).astype(np.uint8))


def _window(photo: Image.Image) -> Image.Image:
    """One app window (title bar, address, sidebar and footer text) around ``photo``: the same for every photo."""
    frame = Image.new("RGB", (480, 360), (236, 236, 236))
    draw = ImageDraw.Draw(frame)
    draw.rectangle((0, 0, 480, 30), fill=(50, 54, 62))
    draw.text((60, 8), "https://pictures.example.org/view/8812", font=_font(TEXT_FONTS[0], 12), fill=(240, 240, 240))
    for row in range(8):
        draw.text((8, 50 + 36 * row), f"Folder {row + 1} · {9 * row + 4}", font=_font(TEXT_FONTS[0], 11), fill=(80, 80, 80))
    draw.text((150, 338), "Like · Share · Save · Report", font=_font(TEXT_FONTS[1], 12), fill=(60, 60, 60))
    inside = ImageOps.contain(photo, (330, 290))
    frame.paste(inside, (140 + (330 - inside.width) // 2, 38 + (290 - inside.height) // 2))
    return frame


def _groups(images: dict[str, Image.Image], config: DedupConfig = DedupConfig()) -> dict[str, int]:
    table = pa.table({"key": list(images), "uri": [f"/lake/{k}.jpg" for k in images],
                      "sha256": [hashlib.sha256(np.asarray(im).tobytes()).hexdigest() for im in images.values()],
                      "width": [im.width for im in images.values()], "height": [im.height for im in images.values()]})
    rows = copy_duplicates_table(table, [image_features(im) for im in images.values()], {}, config).to_pylist()
    return {row["key"]: row["group"] for row in rows}


def _flat_pictures() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [_gradient(tuple(map(tuple, rng.integers(0, 256, (2, 3)))), rng.uniform(0, np.pi), 0.0) for _ in range(6)]


def test_the_frame_shared_by_many_images_is_learned_as_a_template():
    shots = [describe(_window(photo)) for photo in _flat_pictures() + [_photo(n) for n in PHOTOS[:4]]]
    bursty = bursty_descriptors(shots, min_images=8)
    assert all(mask.sum() >= 20 for mask in bursty)  # the frame's text and bars recur in all ten
    content = content_features(shots[0], bursty[0])
    assert len(content) < len(shots[0]) and content.template is not None and content.template.any()
    alone = bursty_descriptors([describe(_photo(n)) for n in PHOTOS], min_images=8)
    assert not any(mask.any() for mask in alone)  # unrelated photos share nothing that recurs


def test_a_shared_frame_around_two_different_photos_is_not_a_copy():
    pictures = _flat_pictures() + [_photo(n) for n in PHOTOS[:4]]
    pool = {f"shot{i}": _window(p) for i, p in enumerate(pictures)}
    groups = _groups(pool)
    assert len(set(groups.values())) == len(pool)
    before = _groups(pool, DedupConfig(burst_images=0, global_candidates=0))  # the frame trusted: linked
    assert len(set(before.values())) < len(pool)


def test_a_flat_gradient_and_its_shifted_twin_are_not_copies():
    colours = ((30, 60, 200), (240, 200, 40))
    pool = {"gradient": _gradient(colours, 0.3, 0.0), "twin": _gradient(colours, 0.55, 0.15),
            **{name: _photo(name) for name in PHOTOS[:3]}}
    groups = _groups(pool)
    assert groups["gradient"] != groups["twin"]


def test_a_40_percent_crop_of_a_textured_photo_is_a_copy_among_frames_and_photos():
    astronaut = _photo("astronaut", 320)
    crop = astronaut.crop((60, 40, 262, 242))  # 202 x 202 of 320 x 320: 40 % of the area
    pool = {"astronaut": astronaut, "crop": crop, **{name: _photo(name) for name in PHOTOS[1:6]},
            **{f"shot{i}": _window(p) for i, p in enumerate(_flat_pictures() + [_photo(n) for n in PHOTOS[6:]])}}
    groups = _groups(pool)
    assert groups["crop"] == groups["astronaut"]
    assert sum(g == groups["astronaut"] for g in groups.values()) == 2


def test_vlad_puts_a_copy_among_the_nearest_and_candidates_are_each_pair_once():
    images = [_photo(n) for n in PHOTOS] + [ImageOps.mirror(_photo("chelsea").crop((20, 20, 230, 230)))]
    local = [describe(im) for im in images]
    model = VladModel.fit(local, words=16, dim=8, seed=0)
    vectors = model.describe(local)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    mirrored = model.describe([f.mirror for f in local])
    first, second, score = vlad_candidates(vectors, mirrored, k=4, max_candidates=1, threshold=-1.0)
    pairs = list(zip(first.tolist(), second.tolist()))
    assert all(a < b for a, b in pairs) and len(set(pairs)) == len(pairs)
    copy = len(images) - 1
    best = max((s, a if b == copy else b) for a, b, s in zip(first, second, score) if copy in (a, b))
    assert best[1] == PHOTOS.index("chelsea")


def test_verification_blocks_cover_every_candidate_once_and_read_few_partitions():
    from dinolab.curate.copydetect.pipeline import candidate_blocks

    rng = np.random.default_rng(0)
    partition = np.repeat(np.arange(10), 50)  # 500 images in 10 partitions
    pairs = np.unique(np.sort(rng.integers(0, 500, (3000, 2)), axis=1), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    blocks = candidate_blocks(pairs, partition, size=200)
    joined = np.concatenate(blocks)
    assert len(joined) == len(pairs) and len(np.unique(joined, axis=0)) == len(pairs)
    assert all(len(b) <= 200 for b in blocks)
    read = [len(np.unique(partition[b[:, 0]])) + len(np.unique(partition[b[:, 1]])) for b in blocks]
    assert np.mean(read) <= 6  # shuffled, each block would touch all 10 partitions on both sides


def test_a_hash_code_shared_by_many_images_gives_no_candidates():
    from dinolab.curate.copydetect.pipeline import frequent_codes

    # rows 0-9 all within the radius of each other (a frame's hash), rows 10-11 one pair
    first = np.array([a for a in range(10) for b in range(a + 1, 10)] + [10])
    second = np.array([b for a in range(10) for b in range(a + 1, 10)] + [11])
    keep = frequent_codes(first, second, 12, limit=8)
    assert keep.tolist() == [False] * 45 + [True]
    assert frequent_codes(first, second, 12, limit=0).all()  # off
