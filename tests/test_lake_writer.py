"""The lake writer that the demo lake, the tests' lakes and the benchmarks share."""

import numpy as np
import pytest
from PIL import Image

from dinolab.pipelines.lake_writer import save_image, write_big_lake, write_fashion_lake
from dinolab.pretrain.data.fashion_mnist import load_fashion_mnist


def test_fashion_lake_numbers_files_by_their_index_in_the_split(tmp_path):
    folders = write_fashion_lake(tmp_path, pool=3, curated=2, evals=1)
    names = {kind: sorted(p.name for p in folder.iterdir()) for kind, folder in folders.items()}
    assert names == {"pool": ["fm_0000.png", "fm_0001.png", "fm_0002.png", "web_0005.png"],
                     "curated": ["query_0003.png", "query_0004.png"], "eval": ["test_0005.png"]}
    images, _ = load_fashion_mnist("train", limit=6)
    np.testing.assert_array_equal(np.asarray(Image.open(folders["curated"] / "query_0004.png")), images[4].numpy())
    assert (folders["pool"] / "web_0005.png").read_bytes() == (folders["eval"] / "test_0005.png").read_bytes()


def test_fashion_lake_without_evals_has_no_eval_folder_and_refuses_more_than_the_split(tmp_path):
    assert sorted(write_fashion_lake(tmp_path / "a", pool=1, curated=1, digits=5)) == ["curated", "pool"]
    assert (tmp_path / "a" / "pool" / "fm_00000.png").is_file()
    with pytest.raises(ValueError, match="asked for 60001"):
        write_fashion_lake(tmp_path / "b", pool=60_000, curated=1)


def test_save_image_and_big_lake(tmp_path):
    image = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    assert save_image(tmp_path, "x", image, "JPEG") == "x.jpg"
    assert Image.open(tmp_path / "x.jpg").format == "JPEG"
    total = write_big_lake(tmp_path / "big", count=3, side=32)
    files = sorted((tmp_path / "big").iterdir())
    assert [p.name for p in files] == ["big_00000.bmp", "big_00001.bmp", "big_00002.bmp"]
    assert total == sum(p.stat().st_size for p in files) and len({p.read_bytes() for p in files}) == 3
