"""Chunked embedding: resumability, corrupt-chunk redo, sharding by rank, robust decoding."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from curate.embed import (
    PixelEncoder,
    chunk_path,
    decode_image,
    embed_folder,
    list_images,
    load_embeddings,
    read_chunk,
)
from pretrain.data import ImageDecodeError

MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


class CountingEncoder:
    """The pixel encoder, counting how many images it has seen."""

    def __init__(self) -> None:
        self.encoder = PixelEncoder(grid=4)
        self.images_seen = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.images_seen += len(images)
        return self.encoder(images)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i in range(9):
        pixels = (rng.random((20 + i, 24, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / ("sub" if i % 2 else ".") / f"img{i}.png")
    (root / "broken.jpg").write_bytes(b"not an image at all")
    (root / "notes.txt").write_text("ignored: not an image suffix")
    return root


def _embed(encoder, folder: Path, out: Path, files, rank: int = 0, world_size: int = 1):
    return embed_folder(encoder, folder, files, out, 16, MEAN, STD, chunk_size=4, batch_size=3,
                        rank=rank, world_size=world_size, progress=False)


def test_second_run_skips_done_chunks_and_redoes_a_corrupt_one(folder: Path, tmp_path: Path):
    files = list_images(folder)
    assert len(files) == 10 and files[0] == "broken.jpg" and "sub/img1.png" in files
    out = tmp_path / "embeddings"
    encoder = CountingEncoder()
    plan = _embed(encoder, folder, out, files)
    assert plan.todo == [0, 1, 2] and encoder.images_seen == 9  # broken.jpg is skipped
    first = load_embeddings(out, files, 4)

    encoder.images_seen = 0
    plan = _embed(encoder, folder, out, files)
    assert plan.done == [0, 1, 2] and plan.todo == [] and encoder.images_seen == 0

    damaged = chunk_path(out, 1)
    damaged.write_bytes(damaged.read_bytes()[:50])  # a partial write: header cut
    tail_cut = chunk_path(out, 2)
    tail_cut.write_bytes(tail_cut.read_bytes()[:-8])  # intact header, data cut short
    plan = _embed(encoder, folder, out, files)
    assert plan.todo == [1, 2] and encoder.images_seen == 4 + 2
    second = load_embeddings(out, files, 4)
    np.testing.assert_array_equal(first.embeddings, second.embeddings)
    assert second.names == [f for f in files if f != "broken.jpg"]
    assert second.skipped[0][0] == "broken.jpg"
    assert second.sizes[0].tolist() == [24, 20]  # (width, height) of img0.png


def test_ranks_share_chunks_and_merge_to_the_single_process_result(folder: Path, tmp_path: Path):
    files = list_images(folder)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    _embed(PixelEncoder(4), folder, single, files)
    plans = [_embed(PixelEncoder(4), folder, sharded, files, rank, 2) for rank in (0, 1)]
    assert [p.chunks for p in plans] == [[0, 2], [1]]
    np.testing.assert_allclose(
        load_embeddings(sharded, files, 4).embeddings, load_embeddings(single, files, 4).embeddings
    )


def test_missing_chunks_are_named(folder: Path, tmp_path: Path):
    files = list_images(folder)
    out = tmp_path / "embeddings"
    _embed(PixelEncoder(4), folder, out, files, rank=0, world_size=2)
    with pytest.raises(FileNotFoundError, match="chunk_00001"):
        load_embeddings(out, files, 4)


def test_chunk_from_another_file_list_is_redone(folder: Path, tmp_path: Path):
    files = list_images(folder)
    out = tmp_path / "embeddings"
    _embed(PixelEncoder(4), folder, out, files)
    shifted = files[1:] + files[:1]
    encoder = CountingEncoder()
    plan = _embed(encoder, folder, out, shifted)
    assert plan.todo == [0, 1, 2]
    assert read_chunk(chunk_path(out, 0))[2] == shifted[:4]


def test_decode_handles_grayscale_sixteen_bit_palette_and_tiny(tmp_path: Path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((9, 11), 128, np.uint8)).save(gray)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(deep)
    palette = tmp_path / "palette.gif"
    Image.fromarray(np.full((8, 8, 3), 204, np.uint8)).convert("P").save(palette)
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tiny)
    pixels, size = decode_image(gray, 14)
    assert pixels.shape == (3, 14, 14) and size == (11, 9)
    assert torch.allclose(pixels, torch.full_like(pixels, 128 / 255), atol=0.01)
    assert torch.allclose(decode_image(deep, 14)[0], torch.ones(3, 14, 14), atol=0.01)
    web_grey = torch.full((3, 14, 14), 204 / 255)  # a palette colour: no dithering
    assert torch.allclose(decode_image(palette, 14)[0], web_grey, atol=0.01)
    with pytest.raises(ImageDecodeError, match="smaller than"):
        decode_image(tiny, 14)


def test_list_images_rejects_a_missing_folder(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "nowhere")
