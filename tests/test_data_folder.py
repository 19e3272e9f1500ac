"""Image folders, file lists, skip markers through a DataLoader, and the evaluation transform."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import functional as TF

from dinolab.pretrain.data import (
    DatasetError,
    ImageFolder,
    Sample,
    SkippedImage,
    TensorBatches,
    collate_samples,
    eval_transform,
)
from dinolab.pretrain.models import Preprocessing


def _image(path, color=(10, 20, 30), size=(16, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def test_recursive_sorted_case_insensitive_with_class_subfolders(tmp_path):
    _image(tmp_path / "dog" / "b.PNG")
    _image(tmp_path / "cat" / "z.jpeg")
    _image(tmp_path / "cat" / "deep" / "a.JPG")
    _image(tmp_path / "top.bmp")
    _image(tmp_path / ".hidden" / "x.png")
    (tmp_path / "notes.txt").write_text("not listed")
    plain = ImageFolder(tmp_path)
    assert plain.names == ["cat/deep/a.JPG", "cat/z.jpeg", "dog/b.PNG", "top.bmp"]
    assert plain.labels == [-1] * 4
    labelled = ImageFolder(tmp_path, class_subfolders=True)
    assert labelled.classes == ["cat", "dog"] and labelled.labels == [0, 0, 1, -1]
    sample = labelled[2]
    assert isinstance(sample, Sample) and sample.label == 1 and sample.image.size == (16, 12)


def test_file_list_with_integer_and_name_labels(tmp_path):
    _image(tmp_path / "imgs" / "a.png")
    _image(tmp_path / "imgs" / "b.png")
    listed = tmp_path / "list.txt"
    listed.write_text("# comment\nimgs/b.png\t7\n\nimgs/a.png\t2\n")
    dataset = ImageFolder(listed)
    assert dataset.names == ["imgs/b.png", "imgs/a.png"] and dataset.labels == [7, 2]
    assert dataset.path(0) == tmp_path / "imgs" / "b.png"
    listed.write_text(f"{tmp_path / 'imgs' / 'a.png'}\tshoe\nimgs/b.png\tbag\n")
    named = ImageFolder(listed)
    assert named.classes == ["bag", "shoe"] and named.labels == [1, 0]
    assert isinstance(named[0], Sample)
    listed.write_text("imgs/a.png\t1\nimgs/b.png\n")
    with pytest.raises(DatasetError, match="every line"):
        ImageFolder(listed)


def test_empty_and_missing_sources_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(DatasetError, match="holds no images"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(DatasetError, match="no such folder"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "blank.txt").write_text("\n# only comments\n")
    with pytest.raises(DatasetError, match="holds no images"):
        ImageFolder(tmp_path / "blank.txt")


def test_bad_files_become_markers_dropped_by_collate(tmp_path):
    transform = eval_transform(Preprocessing(input_size=16, resize_size=16), patch_size=4)
    _image(tmp_path / "a.png", size=(20, 20))
    (tmp_path / "b.jpg").write_text("text, not a JPEG")
    _image(tmp_path / "c.png", size=(2, 2))
    _image(tmp_path / "d.png", size=(30, 20))
    dataset = ImageFolder(tmp_path, transform=transform)
    assert isinstance(dataset[1], SkippedImage) and dataset[1].name == "b.jpg"
    batches = list(DataLoader(dataset, batch_size=3, collate_fn=collate_samples, num_workers=1))
    assert [b.names for b in batches] == [["a.png"], ["d.png"]]
    assert [s.name for b in batches for s in b.skipped] == ["b.jpg", "c.png"]
    assert batches[0].images.shape == (1, 3, 16, 16) and type(batches[0].images) is torch.Tensor


def test_eval_transform_matches_manual_pipeline():
    pre = Preprocessing(input_size=28, resize_size=32)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    out = eval_transform(pre, patch_size=14)(image)
    resized = image.resize((40, 32), Image.Resampling.BICUBIC)  # shorter side 40 -> 32, width 50 -> 40
    left, top = (40 - 28) // 2, (32 - 28) // 2
    crop = np.asarray(resized.crop((left, top, left + 28, top + 28)), dtype=np.float32) / 255.0
    expected = (crop - np.array(pre.mean, dtype=np.float32)) / np.array(pre.std, dtype=np.float32)
    assert out.shape == (3, 28, 28) and out.dtype == torch.float32
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_eval_transform_sizes_and_patch_check():
    pre = Preprocessing()
    x = torch.randint(0, 256, (2, 3, 300, 400), dtype=torch.uint8)
    assert eval_transform(pre, size=448, patch_size=14)(x).shape == (2, 3, 448, 448)
    with pytest.raises(ValueError, match="not a multiple of the patch size 14"):
        eval_transform(pre, size=450, patch_size=14)
    with pytest.raises(ValueError, match="at least the crop"):
        eval_transform(pre, size=64, resize_size=32)
    batched = eval_transform(pre, size=28, resize_size=28, patch_size=4)(x[:, :, :28, :28])
    expected = TF.normalize(x[:, :, :28, :28].float() / 255, pre.mean, pre.std)  # identity resize
    torch.testing.assert_close(batched.as_subclass(torch.Tensor), expected)


def test_tensor_batches_expand_gray_and_transform():
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    pre = Preprocessing(input_size=32, resize_size=32, mean=(0.0,) * 3, std=(1.0,) * 3)
    batches = list(TensorBatches(images, torch.arange(5), [str(i) for i in range(5)], 2, eval_transform(pre)))
    assert [len(b) for b in batches] == [2, 2, 1]
    first = batches[0].images
    assert first.shape == (2, 3, 32, 32) and torch.equal(first[:, 0], first[:, 2])
    for row in range(2):  # the batched uint8 path matches Pillow's bicubic resize (to one grey level)
        pil = Image.fromarray(images[row].numpy()).resize((32, 32), Image.Resampling.BICUBIC)
        expected = torch.from_numpy(np.array(pil, dtype=np.float32)) / 255
        torch.testing.assert_close(first[row, 0], expected, atol=1 / 255 + 1e-6, rtol=0)
