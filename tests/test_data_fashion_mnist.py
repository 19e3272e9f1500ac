"""Fashion-MNIST IDX parsing (synthetic files checked byte by byte) and the installed split."""

import gzip
import struct

import numpy as np
import pytest
import torch

from dinolab.pretrain.data import DatasetFilesError, FashionMNIST, load_fashion_mnist, read_idx
from dinolab.pretrain.data.fashion_mnist import DEFAULT_DIR, ENV_VAR


def _write_idx(path, array, type_code=0x08):
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture()
def tiny_fmnist(tmp_path):
    """A 5-image test split and a 3-image train split with known pixels and labels."""
    images = np.arange(5 * 28 * 28, dtype=np.int64).reshape(5, 28, 28) % 251
    labels = np.array([3, 0, 9, 3, 1])
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images[:3])
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels[:3])
    return tmp_path, images.astype(np.uint8), labels


def test_read_idx_round_trip(tiny_fmnist):
    root, images, labels = tiny_fmnist
    np.testing.assert_array_equal(read_idx(root / "t10k-images-idx3-ubyte.gz", 3), images)
    np.testing.assert_array_equal(read_idx(root / "t10k-labels-idx1-ubyte.gz", 1), labels)


def test_load_split_limit_and_env_var(tiny_fmnist, monkeypatch):
    root, images, labels = tiny_fmnist
    x, y = load_fashion_mnist("test", root, limit=4)
    assert x.dtype == torch.uint8 and x.shape == (4, 28, 28) and y.dtype == torch.int64
    assert y.tolist() == labels[:4].tolist()
    monkeypatch.setenv(ENV_VAR, str(root))
    assert load_fashion_mnist("train")[0].shape == (3, 28, 28)


def test_corrupt_files_are_clear_errors(tmp_path, tiny_fmnist):
    root, images, labels = tiny_fmnist
    bad_magic = tmp_path / "bad.gz"
    with gzip.open(bad_magic, "wb") as handle:
        handle.write(b"\x01\x02\x08\x03" + b"\x00" * 40)
    with pytest.raises(DatasetFilesError, match="magic"):
        read_idx(bad_magic, 3)
    short = tmp_path / "short.gz"
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 10, 28, 28)
    with gzip.open(short, "wb") as handle:
        handle.write(header + b"\x00" * 100)
    with pytest.raises(DatasetFilesError, match="truncated or corrupt"):
        read_idx(short, 3)
    with pytest.raises(DatasetFilesError, match="expected unsigned bytes"):
        read_idx(root / "t10k-labels-idx1-ubyte.gz", 3)
    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_bytes(b"plain bytes")
    with pytest.raises(DatasetFilesError, match="gzip"):
        read_idx(not_gzip, 1)
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", labels[:2])  # count mismatch with the images
    with pytest.raises(DatasetFilesError, match="5 images but 2 labels"):
        load_fashion_mnist("test", root)


def test_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(DatasetFilesError) as caught:
        load_fashion_mnist("train", tmp_path)
    message = str(caught.value)
    assert "apt-get install dataset-fashion-mnist" in message and ENV_VAR in message
    assert "train-images-idx3-ubyte.gz" in message


def test_dataset_items_pil_tensor_subset(tiny_fmnist):
    root, images, labels = tiny_fmnist
    pil = FashionMNIST("test", root, indices=[4, 2, 0], limit=2)
    assert len(pil) == 2 and pil.names() == ["test/4", "test/2"]
    sample = pil[0]
    assert sample.image.mode == "RGB" and sample.label == 1 and sample.name == "test/4"
    assert np.asarray(sample.image)[..., 0].tolist() == images[4].tolist()
    tensors = FashionMNIST("test", root, as_tensor=True, rgb=False)
    assert tensors[2].image.shape == (1, 28, 28) and torch.equal(tensors[2].image[0], torch.from_numpy(images[2]))
    x, y = tensors.arrays()
    assert x.shape == (5, 28, 28) and y.tolist() == labels.tolist()
    with pytest.raises(IndexError):
        FashionMNIST("test", root, indices=[7])


@pytest.mark.skipif(not (DEFAULT_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist absent")
def test_installed_test_split_shape_and_balance():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10_000, 28, 28) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [1000] * 10  # the test split is balanced
