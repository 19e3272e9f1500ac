"""Robust decoding: every odd file either becomes upright 8-bit RGB or raises ImageDecodeError."""

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from dinolab.pretrain.data.images import ImageDecodeError, decode_image, demo_images, is_image_file, load_image, to_rgb


def _save(path, image, **kwargs):
    image.save(path, **kwargs)
    return path


def test_suffixes_are_case_insensitive():
    assert is_image_file("a/B.JPG") and is_image_file("x.TiFf") and is_image_file("y.webp")
    assert is_image_file("anim.GIF") and not is_image_file("notes.txt") and not is_image_file("archive.zip")


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


def _encoded(image, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, **kwargs)
    return buffer.getvalue()


def test_decode_image_gives_first_gif_frame_and_format():
    frames = [Image.new("RGB", (40, 30), color) for color in ((255, 0, 0), (0, 255, 0))]
    data = _encoded(frames[0], format="GIF", save_all=True, append_images=frames[1:], duration=50)
    decoded = decode_image(data, "anim.gif")
    assert (decoded.width, decoded.height, decoded.format, decoded.image.mode) == (40, 30, "GIF", "RGB")
    assert np.asarray(decoded.image).reshape(-1, 3).tolist() == [[255, 0, 0]] * (40 * 30)


def test_decode_image_reports_upright_original_size_when_downsized():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encoded(Image.new("RGB", (1600, 800), (0, 0, 255)), format="JPEG", exif=exif.tobytes())
    decoded = decode_image(data, "rotated.jpg", max_side=100)
    assert (decoded.width, decoded.height, decoded.format) == (800, 1600, "JPEG")
    assert decoded.image.size == (50, 100)
    webp = decode_image(_encoded(Image.new("RGB", (300, 120)), format="WEBP"), "x.webp", max_side=150)
    assert (webp.width, webp.height, webp.format, webp.image.size) == (300, 120, "WEBP", (150, 60))


def test_decode_image_errors_and_filtered_flag():
    with pytest.raises(ImageDecodeError) as empty:
        decode_image(b"", "empty.jpg")
    assert (empty.value.path, empty.value.reason, empty.value.filtered) == ("empty.jpg", "empty file", False)
    with pytest.raises(ImageDecodeError) as tiny:
        decode_image(_encoded(Image.new("RGB", (4, 4)), format="PNG"), "tiny.png", min_side=8)
    assert tiny.value.filtered and "smaller than 8" in tiny.value.reason
    with pytest.raises(ImageDecodeError) as garbage:
        decode_image(b"not an image at all", "garbage.jpg")
    assert not garbage.value.filtered and "identify" in garbage.value.reason
    copy = pickle.loads(pickle.dumps(tiny.value))  # crosses worker processes intact
    assert (copy.path, copy.reason, copy.filtered, str(copy)) == ("tiny.png", tiny.value.reason, True, str(tiny.value))


def test_load_image_is_decode_image_of_the_file(tmp_path):
    path = _save(tmp_path / "p.png", Image.new("RGB", (30, 20), (1, 2, 3)))
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(decode_image(path.read_bytes(), str(path)).image))
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty file"):
        load_image(tmp_path / "empty.jpg")
