"""Feature extraction against a direct forward pass, and the feature file format."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from dinolab.pretrain.data import ImageFolder, TensorBatches, eval_transform
from dinolab.features import FeatureFileError, Features, extract_features, load_features, save_features
from dinolab.features import store
from dinolab.pretrain.models import Preprocessing, build_vit

PRE = Preprocessing(input_size=28, resize_size=28)


@pytest.fixture()
def pico():
    return build_vit("vit_pico", patch_size=4, img_size=28, preprocessing=PRE)


def _folder(tmp_path):
    colors = {"a/1.png": (200, 10, 10), "a/2.png": (10, 200, 10), "b/3.png": (10, 10, 200)}
    for name, color in colors.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), color).save(tmp_path / name)
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    return tmp_path


def test_extract_matches_direct_forward(tmp_path, pico):
    transform = eval_transform(PRE, patch_size=4)
    dataset = ImageFolder(_folder(tmp_path), class_subfolders=True, transform=transform)
    pico.train()
    features = extract_features(pico, dataset, batch_size=2, pooled_patches=True, progress=False)
    assert pico.training  # the caller's mode is restored
    assert features.names == ["a/1.png", "a/2.png", "b/3.png"]
    assert features.labels.tolist() == [0, 0, 1]
    assert features.skipped == [("b/broken.png", dataset[3].reason)]
    pico.eval()
    images = torch.stack([transform(Image.open(tmp_path / name).convert("RGB")) for name in features.names])
    with torch.no_grad():
        direct = pico.forward_features(images)
    torch.testing.assert_close(features.cls, direct.cls_token, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features.patch_mean, direct.patch_tokens.mean(dim=1), atol=1e-5, rtol=1e-5)
    assert features.cls.dtype == torch.float32 and features.cls.shape == (3, 64)


def test_extract_tensor_batches_without_labels(pico):
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    transform = eval_transform(PRE, patch_size=4)
    batches = TensorBatches(images, None, [f"x{i}" for i in range(5)], 2, transform)
    features = extract_features(pico, batches, progress=False)
    assert features.labels is None and features.patch_mean is None and len(features) == 5
    with torch.no_grad():
        direct = pico(transform(images.unsqueeze(1).expand(-1, 3, -1, -1)).as_subclass(torch.Tensor))
    torch.testing.assert_close(features.cls, direct, atol=1e-5, rtol=1e-5)


def _features(count=4, dim=6, patch=True):
    return Features(
        cls=torch.randn(count, dim),
        names=[f"img_{i}.jpg" for i in range(count)],
        labels=torch.arange(count),
        patch_mean=torch.randn(count, dim) if patch else None,
        skipped=[("bad.jpg", "corrupt")],
        info={"model": {"arch": "vit_pico"}, "preprocessing": {"input_size": 28}},
    )


def _assert_same(a, b):
    assert torch.equal(a.cls, b.cls) and a.names == b.names and a.skipped == b.skipped and a.info == b.info
    assert torch.equal(a.labels, b.labels)
    assert (a.patch_mean is None and b.patch_mean is None) or torch.equal(a.patch_mean, b.patch_mean)


def test_round_trip_in_header(tmp_path):
    original = _features()
    path = save_features(tmp_path / "f.safetensors", original)
    _assert_same(load_features(path), original)
    assert not store.sidecar_path(path).exists()
    plain = _features(patch=False)
    plain.labels = None
    loaded = load_features(save_features(tmp_path / "g.safetensors", plain))
    assert loaded.labels is None and loaded.patch_mean is None


def test_large_name_lists_go_to_a_checked_sidecar(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "HEADER_LIST_MAX_BYTES", 10)
    original = _features()
    path = save_features(tmp_path / "f.safetensors", original)
    sidecar = store.sidecar_path(path)
    assert sidecar.is_file() and "names" not in store.read_feature_metadata(path)
    _assert_same(load_features(path), original)
    payload = json.loads(sidecar.read_text())
    payload["id"] = "someone-else"
    sidecar.write_text(json.dumps(payload))
    with pytest.raises(FeatureFileError, match="another feature file"):
        load_features(path)
    sidecar.unlink()
    with pytest.raises(FeatureFileError, match="missing"):
        load_features(path)


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(FeatureFileError, match="no such feature file"):
        load_features(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(FeatureFileError, match="not a safetensors file"):
        load_features(tmp_path / "junk.safetensors")
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(FeatureFileError, match="not a dinolab feature file"):
        load_features(tmp_path / "model.safetensors")
    good = save_features(tmp_path / "good.safetensors", _features(count=50, dim=32))
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(FeatureFileError, match="corrupt or truncated"):
        load_features(tmp_path / "cut.safetensors")
    with pytest.raises(ValueError, match="names"):
        Features(cls=torch.zeros(3, 2), names=["a"])


def test_compiled_extraction_pads_partial_batches_to_one_shape(pico, monkeypatch):
    """``compile=True`` hands torch.compile a fixed batch (inductor freezing on CPU) and trims padding.

    A real inductor compile takes minutes on this CPU, so ``torch.compile`` is replaced by a recorder that
    runs the function eagerly: what is checked is our side (options, fixed shapes, trimmed outputs).
    """
    calls: list[dict] = []
    shapes: list[tuple[int, ...]] = []

    def recording_compile(function, **kwargs):
        calls.append(kwargs)

        def run(images):
            shapes.append(tuple(images.shape))
            return function(images)

        return run

    monkeypatch.setattr(torch, "compile", recording_compile)
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    transform = eval_transform(PRE, patch_size=4)
    names = [f"x{i}" for i in range(5)]
    eager = extract_features(pico, TensorBatches(images, None, names, 2, transform), pooled_patches=True, progress=False)
    compiled = extract_features(pico, TensorBatches(images, None, names, 2, transform), pooled_patches=True,
                                progress=False, compile=True)
    assert calls == [{"dynamic": False, "options": {"freezing": True}}]
    assert shapes == [(2, 3, 28, 28)] * 3  # the last batch of 1 image was padded to 2
    torch.testing.assert_close(compiled.cls, eager.cls, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(compiled.patch_mean, eager.patch_mean, atol=1e-6, rtol=1e-6)
    assert compiled.names == names
