"""Sequence packing equals separate forwards (eval, masks, registers, flex back end, drop path)."""

import warnings

import pytest
import torch

from dinolab.pretrain.models import build_vit
from dinolab.pretrain.models.packing import (
    block_diagonal_mask,
    forward_features_packed,
    kept_count,
    segment_ids,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids thread-synchronisation stalls on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _crops_and_masks():
    globals_ = torch.randn(3, 3, 28, 28)  # 4 patches each
    locals_ = torch.randn(5, 3, 14, 14)  # 1 patch each
    global_masks = torch.zeros(3, 4, dtype=torch.bool)
    global_masks[0, 1] = global_masks[2, [0, 3]] = True
    return [globals_, locals_], [global_masks, None]


def _assert_outputs_equal(packed, separate):
    assert len(packed) == len(separate)
    for p, s in zip(packed, separate):
        assert p.grid_hw == s.grid_hw
        for name in ("cls_token", "register_tokens", "patch_tokens", "prenorm"):
            torch.testing.assert_close(getattr(p, name), getattr(s, name), atol=1e-5, rtol=1e-5)
        assert (p.masks is None) == (s.masks is None)


def test_segment_ids_and_block_diagonal_mask():
    assert segment_ids([2, 3]).tolist() == [0, 0, 1, 1, 1]
    mask = block_diagonal_mask([2, 1])
    expected = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("registers", [0, 2])
def test_packed_equals_separate_forwards(registers):
    model = build_vit("vit_pico", num_register_tokens=registers, layerscale_init=1.0).eval()
    images, masks = _crops_and_masks()
    with torch.no_grad():
        separate = model.forward_features(images, masks)
        packed = forward_features_packed(model, images, masks, attention="dense")
    _assert_outputs_equal(packed, separate)
    assert packed[0].masks is masks[0]


def test_flex_backend_matches_dense_on_cpu():
    model = build_vit("vit_pico", num_register_tokens=1, layerscale_init=1.0).eval()
    images, masks = _crops_and_masks()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager FlexAttention warns that it is not fused
        flex = forward_features_packed(model, images, masks, attention="flex")
        separate = model.forward_features(images, masks)
    _assert_outputs_equal(flex, separate)


def test_packed_gradients_equal_separate_gradients():
    # float64: fp32 round-off of the cls-token gradient alone is ~1e-4 relative (checked against fp64).
    model = build_vit("vit_pico", num_register_tokens=1, layerscale_init=1.0).double().train()
    images, masks = _crops_and_masks()
    images = [image.double() for image in images]

    def grads(outputs):
        model.zero_grad()
        loss = sum((o.cls_token**2).sum() + o.patch_tokens.sum() for o in outputs)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    separate = grads(model.forward_features(images, masks))
    packed = grads(forward_features_packed(model, images, masks, attention="dense"))
    assert separate.keys() == packed.keys()
    for name in separate:
        torch.testing.assert_close(packed[name], separate[name], atol=1e-10, rtol=1e-10)


def _reference_drop_path(model, images, rate):
    """Independent per-crop forward with the packed path's random draws (same order: per block, the
    attention then the FFN branch, crop batches in order; subsets drawn before, masks after a branch)."""
    xs = [model.prepare_tokens(image) for image in images]
    for block in model.blocks:
        for branch in (lambda t: block._attn_branch(t), block._ffn_branch):
            if rate > 0.1:
                kept = [torch.randperm(x.shape[0])[: kept_count(x.shape[0], rate)] for x in xs]
                xs = [torch.index_add(x, 0, k, branch(x[k]) * (x.shape[0] / k.numel())) for x, k in zip(xs, kept)]
            else:
                updates = [branch(x) for x in xs]
                masks = [x.new_empty(x.shape[0], 1, 1).bernoulli_(1 - rate) for x in xs]
                xs = [x + u * m / (1 - rate) for x, u, m in zip(xs, updates, masks)]
    return [model.norm(x) for x in xs]


@pytest.mark.parametrize("rate", [0.4, 0.1])
def test_packed_drop_path_matches_per_crop_reference(rate):
    model = build_vit("vit_pico", drop_path_rate=rate, layerscale_init=1.0).train()
    images = [torch.randn(10, 3, 28, 28), torch.randn(12, 3, 14, 14)]
    torch.manual_seed(123)
    packed = forward_features_packed(model, images, attention="dense")
    torch.manual_seed(123)
    reference = _reference_drop_path(model, images, rate)
    for out, ref in zip(packed, reference):
        torch.testing.assert_close(model.norm(out.prenorm), ref, atol=1e-5, rtol=1e-5)
    # Some samples really were dropped: the training output differs from eval mode.
    with torch.no_grad():
        evaluated = forward_features_packed(model.eval(), images, attention="dense")
    assert not torch.allclose(evaluated[0].prenorm, packed[0].prenorm.detach())


def test_bad_inputs_are_clear_errors():
    model = build_vit("vit_pico").eval()
    images, _ = _crops_and_masks()
    with pytest.raises(ValueError, match="masks"):
        forward_features_packed(model, images, masks=[None])
    with pytest.raises(ValueError, match="attention backend"):
        forward_features_packed(model, images, attention="sparse")
