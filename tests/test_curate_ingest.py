"""Ingest: one images row per file, in order; valid files hashed and measured, bad ones reported, none raising."""

import hashlib
import struct
import zlib

import imagehash
import numpy as np
import pyarrow as pa
import pytest
import skimage.data
from PIL import Image

from dinolab.curate.ingest import HASH_SIDE, ingest_file, ingest_partition, read_bytes, summarize
from dinolab.schemas.config import IngestConfig
from dinolab.schemas.tables import FILES, validate

CONFIG = IngestConfig(min_side=16)


def _files_table(paths):
    count = len(paths)
    return pa.table(
        {
            "key": [f"k{i:03d}-{path.stem}" for i, path in enumerate(paths)],
            "uri": [str(path) for path in paths],
            "role": ["pool"] * count,
            "set": ["lake"] * count,
            "partition": [7] * count,
        },
        schema=FILES.schema,
    )


def _png_claiming(width, height):
    """A ~60-byte PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _gif_frames():
    return [Image.new("RGB", (40, 30), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]


@pytest.fixture
def lake(tmp_path):
    """``{name: (path, expected (width, height, format) or (status, reason fragment))}`` of a mixed lake."""
    astronaut = Image.fromarray(skimage.data.astronaut())
    valid, bad = {}, {}

    def save(name, image, size, fmt, **kwargs):
        path = tmp_path / name
        image.save(path, **kwargs)
        valid[name] = (path, size + (fmt,))

    save("astronaut.png", astronaut, (512, 512), "PNG")
    save("small.png", astronaut.resize((200, 160), Image.Resampling.BICUBIC), (200, 160), "PNG")
    save("chelsea.jpg", Image.fromarray(skimage.data.chelsea()), (451, 300), "JPEG", quality=90)
    save("coffee.webp", Image.fromarray(skimage.data.coffee()), (600, 400), "WEBP", quality=80)
    save("rocket.bmp", Image.fromarray(skimage.data.rocket()), (640, 427), "BMP")
    save("motorcycle.tif", Image.fromarray(skimage.data.stereo_motorcycle()[0]), (741, 500), "TIFF")
    save("big.jpg", astronaut.resize((2048, 1536), Image.Resampling.BICUBIC), (2048, 1536), "JPEG", quality=92)
    frames = _gif_frames()
    save("animated.gif", frames[0], (40, 30), "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    save("cmyk.jpg", Image.fromarray(skimage.data.chelsea()).convert("CMYK"), (451, 300), "JPEG")
    palette = Image.new("RGB", (32, 24), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    save("palette.png", palette, (32, 24), "PNG", transparency=0)
    rgba = Image.new("RGBA", (50, 20), (200, 0, 0, 0))
    rgba.putpixel((0, 0), (200, 0, 0, 255))
    save("rgba.png", rgba, (50, 20), "PNG")
    deep = Image.fromarray((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20))
    assert deep.mode == "I;16"
    save("deep.png", deep, (64, 48), "PNG")
    save("camera.png", Image.fromarray(skimage.data.camera()), (512, 512), "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise: stored 60x40, upright 40x60
    save("rotated.jpg", Image.new("RGB", (60, 40), (0, 0, 255)), (40, 60), "JPEG", exif=exif.tobytes())

    def write(name, data, status, fragment):
        path = tmp_path / name
        path.write_bytes(data)
        bad[name] = (path, (status, fragment))

    chelsea = (tmp_path / "chelsea.jpg").read_bytes()
    write("truncated.jpg", chelsea[: len(chelsea) // 2], "error", "truncated")
    write("garbage.jpg", np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "error", "identify")
    write("empty.png", b"", "error", "empty file")
    write("bomb.png", _png_claiming(100_000, 100_000), "error", "bomb")
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "tiny.png")
    bad["tiny.png"] = (tmp_path / "tiny.png", ("filtered", "smaller than 16"))
    bad["missing.jpg"] = (tmp_path / "missing.jpg", ("error", "no such file"))
    (tmp_path / "folder.jpg").mkdir()
    bad["folder.jpg"] = (tmp_path / "folder.jpg", ("error", "directory"))
    return valid, bad


def _ingest(lake):
    valid, bad = lake
    entries = {**valid, **bad}
    order = list(np.random.default_rng(1).permutation(sorted(entries)))  # neither sorted nor grouped by kind
    paths = [entries[name][0] for name in order]
    files = _files_table(paths)
    images = ingest_partition(files, CONFIG)
    return files, images, {row["uri"]: row for row in images.to_pylist()}


def test_partition_keeps_order_and_validates(lake):
    files, images, _ = _ingest(lake)
    validate(images, "images")
    assert images.num_rows == files.num_rows
    for column in FILES.schema.names:
        assert images.column(column).to_pylist() == files.column(column).to_pylist()


def test_valid_images_are_ok_measured_and_hashed(lake):
    valid, _ = lake
    _, _, rows = _ingest(lake)
    for name, (path, (width, height, fmt)) in valid.items():
        row = rows[str(path)]
        assert (row["status"], row["error"]) == ("ok", None), name
        assert (row["width"], row["height"], row["format"]) == (width, height, fmt), name
        data = path.read_bytes()
        assert row["bytes"] == len(data) and row["sha256"] == hashlib.sha256(data).hexdigest(), name
        assert len(row["phash"]) == 16 and int(row["phash"], 16) >= 0, name


def test_phash_matches_an_independent_hash(lake):
    valid, _ = lake
    _, _, rows = _ingest(lake)

    def independent(name):
        with Image.open(valid[name][0]) as image:
            return imagehash.phash(image.convert("RGB"))

    assert max(valid["small.png"][1][:2]) <= HASH_SIDE  # not downsized: the very same hash
    assert rows[str(valid["small.png"][0])]["phash"] == str(independent("small.png"))
    downsized = ("big.jpg", "astronaut.png", "chelsea.jpg", "coffee.webp", "rocket.bmp", "motorcycle.tif", "camera.png")
    for name in downsized:
        assert max(valid[name][1][:2]) > HASH_SIDE, name  # downsized before hashing: nearly the same hash
        assert imagehash.hex_to_hash(rows[str(valid[name][0])]["phash"]) - independent(name) <= 4, name


def test_phash_finds_copies_and_separates_photos(lake):
    valid, _ = lake
    _, _, rows = _ingest(lake)
    phash = {name: imagehash.hex_to_hash(rows[str(path)]["phash"]) for name, (path, _) in valid.items()}
    assert phash["big.jpg"] - phash["astronaut.png"] <= 4  # resized, recompressed copy
    photos = ("astronaut.png", "chelsea.jpg", "coffee.webp", "rocket.bmp", "motorcycle.tif", "camera.png")
    assert min(phash[a] - phash[b] for a in photos for b in photos if a < b) > 10
    assert len({rows[str(path)]["sha256"] for path, _ in valid.values()}) == len(valid)


def test_bad_files_are_reported_not_raised(lake):
    _, bad = lake
    _, images, rows = _ingest(lake)
    for name, (path, (status, fragment)) in bad.items():
        row = rows[str(path)]
        assert row["status"] == status, (name, row)
        assert row["error"] and fragment in row["error"] and "\n" not in row["error"], (name, row["error"])
        assert row["phash"] is None, name
        if path.is_file():
            data = path.read_bytes()
            assert row["bytes"] == len(data) and row["sha256"] == hashlib.sha256(data).hexdigest(), name
        else:
            assert row["bytes"] is None and row["sha256"] is None, name
    tiny = rows[str(bad["tiny.png"][0])]
    assert (tiny["width"], tiny["height"], tiny["format"]) == (4, 4, "PNG")
    for name in ("truncated.jpg", "garbage.jpg", "empty.png", "missing.jpg"):
        assert rows[str(bad[name][0])]["width"] is None, name
    counts = summarize(images)
    assert counts == {"ok": len(lake[0]), "filtered": 1, "error": len(bad) - 1}


def test_max_pixels_refuses_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (300, 200)).save(path)
    refused = ingest_file(str(path), IngestConfig(min_side=1, max_pixels=300 * 200 - 1))
    assert refused.status == "error" and "decompression bomb" in refused.error and refused.bytes == path.stat().st_size
    accepted = ingest_file(str(path), IngestConfig(min_side=1, max_pixels=300 * 200))
    assert (accepted.status, accepted.width, accepted.height) == ("ok", 300, 200)


def test_an_unexpected_failure_stays_in_its_row(tmp_path, monkeypatch):
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (5, 5, 5)).save(good)

    def flaky(uri):
        if uri.endswith("boom.png"):
            raise RuntimeError("storage hiccup\nsecond line")
        return read_bytes(uri)

    monkeypatch.setattr("dinolab.curate.ingest.read_bytes", flaky)
    images = ingest_partition(_files_table([good, tmp_path / "boom.png"]), CONFIG)
    assert images.column("status").to_pylist() == ["ok", "error"]
    assert images.column("error").to_pylist()[1] == "unreadable file (RuntimeError: storage hiccup second line)"


def test_empty_partition():
    images = ingest_partition(_files_table([]), CONFIG)
    assert images.num_rows == 0
    validate(images, "images")
