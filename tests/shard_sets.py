"""Small webdataset shard sets for the shard-fed training tests, written by the real curate writer."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from dinolab.curate.shards import ShardSample, shard_index, shard_name, write_index, write_shard
from dinolab.pretrain.data.fashion_mnist import load_fashion_mnist

CORRUPT = b"\x89PNG\r\n\x1a\n but not really an image"


def fashion_mnist_pngs(count: int) -> list[tuple[str, bytes]]:
    """The first ``count`` Fashion-MNIST training images as ``(key, PNG bytes)`` (lossless: the same pixels)."""
    images, _ = load_fashion_mnist("train", limit=count)
    samples = []
    for i, array in enumerate(images.numpy()):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        samples.append((f"fm_{i:05d}", buffer.getvalue()))
    return samples


def write_shards(folder: Path, samples: list[tuple], sizes: list[int], ext: str = "png") -> Path:
    """``samples`` (``(key, bytes)`` or ``(key, bytes, ext)``, in order) cut into shards of ``sizes``
    under ``folder`` with a wids ``index.json``, as the curate shard stage writes them; the index path."""
    assert sum(sizes) == len(samples), (sum(sizes), len(samples))
    folder.mkdir(parents=True, exist_ok=True)
    infos, start = [], 0
    for number, size in enumerate(sizes):
        chunk = samples[start : start + size]
        start += size
        written = []
        for i, (key, data, *member_ext) in enumerate(chunk):
            suffix = member_ext[0] if member_ext else ext
            meta = {"uri": f"/lake/{key}.{suffix}", "position": start - size + i}
            written.append(ShardSample(key, data, suffix, meta))
        infos.append(write_shard(folder / shard_name(number), written))
    index = folder / "index.json"
    write_index(index, shard_index(infos, name="test-shards"))
    return index
