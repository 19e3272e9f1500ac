"""The extraction benchmark compares like with like: its weight copies reproduce dinolab's features."""

import importlib

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("timm")


def _benchmark_module():
    return importlib.import_module("benchmarks.extract")


def test_hf_and_timm_copies_match_dinolab():
    bench = _benchmark_module()
    model = bench.build_dinolab("dinov2_vits14", size=56, depth=2)
    calls = bench.forwards(model, bench.hf_copy(model), bench.timm_copy(model))
    batch = torch.randn(2, 3, 56, 56)
    with torch.inference_mode():
        ours = calls["dinolab"](batch)
        assert ours.shape == (2, 384) and ours.std() > 0.1
        for name in ("transformers", "timm"):
            torch.testing.assert_close(calls[name](batch), ours, atol=1e-4, rtol=0)
    other = bench.build_dinolab("dinov2_vits14", size=56, depth=2)  # different weights differ
    with torch.inference_mode():
        assert (other.forward_features(batch).cls_token - ours).abs().max() > 1e-2
