"""Evaluation features: equal to the model's own outputs, cached on disk under a content key."""

import torch

from dinolab.pretrain.data import TensorBatches
from dinolab.features.eval.feature_cache import (
    FeatureCache,
    cache_key,
    extract_eval_features,
    model_fingerprint,
)
from dinolab.features.eval.sources import align_labels
from dinolab.pretrain.models import build_vit


def _model():
    return build_vit("vit_pico", patch_size=4, img_size=16, depth=3).eval()


def _batches(num: int = 10):
    images = torch.randint(0, 256, (num, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(num) % 3
    to_float = lambda x: x.float() / 255.0  # noqa: E731
    return TensorBatches(images, labels, [f"img{i}" for i in range(num)], batch_size=4, transform=to_float), images


def test_features_equal_model_outputs():
    model = _model()
    batches, images = _batches()
    features = extract_eval_features(model, batches, num_blocks=4, progress=False)
    assert features.cls_layers.shape == (10, 3, 64)  # only 3 blocks exist
    x = images.unsqueeze(1).expand(-1, 3, -1, -1).float() / 255.0
    with torch.no_grad():
        out = model.forward_features(x)
        second_last = model.get_intermediate_layers(x, n=[1], return_class_token=True)[0][1]
    torch.testing.assert_close(features.cls, out.cls_token)
    torch.testing.assert_close(features.patch_mean, out.patch_tokens.mean(dim=1))
    torch.testing.assert_close(features.cls_layers[:, 1], second_last)
    assert features.labels.tolist() == (torch.arange(10) % 3).tolist()
    assert features.names[3] == "img3"


def test_cache_round_trip_and_keys(tmp_path):
    model = _model()
    batches, _ = _batches()
    features = extract_eval_features(model, batches, progress=False)
    fingerprint = model_fingerprint(model)
    key = cache_key(fingerprint, {"source": "a"}, {"input_size": 16})
    cache = FeatureCache(tmp_path)
    assert cache.load(key) is None
    cache.save(key, features)
    loaded = cache.load(key)
    assert torch.equal(loaded.cls_layers, features.cls_layers) and loaded.names == features.names
    assert torch.equal(loaded.labels, features.labels)
    # any change of weights, data or preprocessing gives another key
    other = _model()
    assert model_fingerprint(other) != fingerprint
    assert model_fingerprint(model) == fingerprint
    assert cache_key(fingerprint, {"source": "b"}, {"input_size": 16}) != key
    assert cache_key(fingerprint, {"source": "a"}, {"input_size": 32}) != key
    cache.path(key).write_bytes(b"truncated")  # a broken cache file is ignored, not fatal
    assert cache.load(key) is None


def test_align_labels_by_class_name():
    labels = torch.tensor([0, 1, 1])
    aligned = align_labels(labels, ["cat", "zebra"], ["ant", "cat", "dog", "zebra"])
    assert aligned.tolist() == [1, 3, 3]
    try:
        align_labels(labels, ["cat", "yak"], ["cat", "dog"])
    except Exception as error:
        assert "yak" in str(error)
    else:
        raise AssertionError("unknown class accepted")
