"""Robust decoding: every odd file either becomes upright 8-bit RGB or raises ImageDecodeError."""

import io

import numpy as np
import pytest
from PIL import Image

from pretrain.data.images import ImageDecodeError, demo_images, is_image_file, load_image, to_rgb


def _save(path, image, **kwargs):
    image.save(path, **kwargs)
    return path


def test_suffixes_are_case_insensitive():
    assert is_image_file("a/B.JPG") and is_image_file("x.TiFf") and is_image_file("y.webp")
    assert not is_image_file("notes.txt") and not is_image_file("archive.gif")


def test_grayscale_palette_and_cmyk_become_rgb(tmp_path):
    gray = _save(tmp_path / "g.png", Image.new("L", (10, 12), 77))
    palette = _save(tmp_path / "p.png", Image.new("RGB", (10, 10), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE))
    cmyk = _save(tmp_path / "c.jpg", Image.new("CMYK", (16, 16), (0, 0, 0, 0)), quality=100)
    for path in (gray, palette, cmyk):
        image = load_image(path)
        assert image.mode == "RGB"
    assert np.asarray(load_image(gray))[0, 0].tolist() == [77, 77, 77]
    assert np.asarray(load_image(palette))[0, 0].tolist() == [10, 200, 30]
    assert np.asarray(load_image(cmyk)).min() >= 250  # no ink = white


def test_rgba_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (10, 10), (200, 0, 0, 0))
    rgba.putpixel((0, 0), (200, 0, 0, 255))
    pixels = np.asarray(load_image(_save(tmp_path / "a.png", rgba)))
    assert pixels[0, 0].tolist() == [200, 0, 0]  # opaque pixel kept
    assert pixels[5, 5].tolist() == [255, 255, 255]  # transparent pixel shows the background


def test_sixteen_bit_png_and_tiff_scale_by_bit_depth(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 257 * 255]] * 8, dtype=np.uint16)
    png = tmp_path / "deep.png"
    Image.fromarray(values).save(png)
    assert Image.open(png).mode.startswith("I")
    row = np.asarray(load_image(png, min_side=1))[0, :, 0]
    assert row.tolist() == [0, 100, 255, 255]
    tiff = tmp_path / "deep.tif"
    Image.fromarray(values).save(tiff)
    assert np.asarray(load_image(tiff, min_side=1))[0, :, 0].tolist() == [0, 100, 255, 255]


def test_float_tiff_in_unit_range_and_beyond(tmp_path):
    unit = np.tile(np.array([0.0, 0.5, 1.0, 0.2], dtype=np.float32), (8, 1))
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    assert Image.open(tmp_path / "unit.tif").mode == "F"
    assert np.asarray(load_image(tmp_path / "unit.tif", min_side=1))[0, :, 0].tolist() == [0, 128, 255, 51]
    wide = unit * 1000.0 - 100.0  # range [-100, 900] is min-max scaled
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    assert np.asarray(load_image(tmp_path / "wide.tif", min_side=1))[0, :, 0].tolist() == [0, 128, 255, 51]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes())
    assert load_image(path).size == (10, 20)


def test_bad_files_raise_decode_error(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(good, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (tmp_path / "text.jpg").write_text("this is not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    _save(tmp_path / "tiny.png", Image.new("RGB", (2, 2)))
    reasons = {}
    for name in ("truncated.jpg", "text.jpg", "empty.png", "tiny.png", "missing.png"):
        with pytest.raises(ImageDecodeError) as caught:
            load_image(tmp_path / name)
        assert caught.value.path.endswith(name)
        reasons[name] = caught.value.reason
    assert "truncated" in reasons["truncated.jpg"]
    assert "smaller than" in reasons["tiny.png"]
    assert "no such file" in reasons["missing.png"]
    assert load_image(tmp_path / "tiny.png", min_side=1).size == (2, 2)


def test_decompression_bomb_refused_per_call_without_touching_global(tmp_path):
    path = _save(tmp_path / "big.png", Image.new("L", (300, 200)))
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        load_image(path, max_pixels=300 * 200 - 1)
    assert Image.MAX_IMAGE_PIXELS == before
    assert load_image(path, max_pixels=300 * 200).size == (300, 200)


def test_max_side_downsizes_on_load(tmp_path):
    jpeg = _save(tmp_path / "big.jpg", Image.new("RGB", (800, 400), (50, 60, 70)))
    png = _save(tmp_path / "big.png", Image.new("RGB", (800, 400), (50, 60, 70)))
    for path in (jpeg, png):
        assert load_image(path, max_side=100).size == (100, 50)
    assert load_image(jpeg).size == (800, 400)


def test_to_rgb_on_two_channel_gray_alpha():
    image = Image.new("LA", (4, 4), (0, 0))
    assert np.asarray(to_rgb(image)).min() == 255


def test_demo_images_are_rgb():
    images = demo_images(("astronaut", "chelsea"))
    assert set(images) == {"astronaut", "chelsea"}
    assert all(image.mode == "RGB" for image in images.values())
    assert images["astronaut"].size == (512, 512)
