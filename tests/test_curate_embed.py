"""The embed stage: ok rows only, the pixel embedder's vectors, seeded random backbones, files that vanish."""

import numpy as np
import pyarrow as pa
from PIL import Image

from dinolab.curate.embed import embed_partition, load_embedder
from dinolab.schemas.config import EmbedConfig
from dinolab.schemas.tables import IMAGES, validate


def _images(rows: list[dict]) -> pa.Table:
    columns = {name: [row.get(name) for row in rows] for name in IMAGES.schema.names}
    return pa.table(columns, schema=IMAGES.schema)


def _row(key: str, uri: str, status: str = "ok") -> dict:
    return {"key": key, "uri": uri, "role": "pool", "set": "pool", "partition": 0, "status": status}


def test_pixel_vectors_are_centred_thumbnails_of_ok_rows_only(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    for i, array in enumerate(arrays):
        Image.fromarray(array).save(tmp_path / f"{i}.png")
    images = _images([_row("a", str(tmp_path / "0.png")), _row("b", str(tmp_path / "1.png"), "error"),
                      _row("c", str(tmp_path / "2.png")), _row("d", str(tmp_path / "gone.png"))])
    rows, vectors = embed_partition(images, load_embedder(EmbedConfig(embedder="pixels", pixel_grid=8)), 10**8)
    validate(rows, "embeddings")
    assert rows.column("key").to_pylist() == ["a", "c"] and rows.column("row").to_pylist() == [0, 1]
    for vector, array in zip(vectors, (arrays[0], arrays[2])):
        expected = array.transpose(2, 0, 1).reshape(-1).astype(np.float32) / 255
        np.testing.assert_allclose(vector, expected - expected.mean(), atol=1e-6)


def test_an_architecture_name_gives_the_same_random_weights_on_every_worker(tmp_path):
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "x.png")
    images = _images([_row("x", str(tmp_path / "x.png"))])
    config = EmbedConfig(embedder="vit_pico", image_size=28)
    first = embed_partition(images, load_embedder(config), 10**8)[1]
    second = embed_partition(images, load_embedder(config), 10**8)[1]
    assert first.shape[0] == 1 and np.abs(first).sum() > 0
    np.testing.assert_array_equal(first, second)
