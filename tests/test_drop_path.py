"""Efficient stochastic depth (DINOv2 Sec. 5) through a real transformer block.

With subset drop path each branch runs on exactly ``keep = int(B·(1 − rate))`` random samples and is
scaled by ``s = B / keep``, so for one residual ``E[x + s·1[kept]·f(x)] = x + (keep/B)·s·f(x) = x + f(x)``
per sample (``f`` depends on the sample alone). Through a whole block the second branch sees the first
one's random output, so the exactly checkable statement is that every sample's output is one of the
four (attention kept?, FFN kept?) cases computed in eval mode, with exactly ``keep`` samples per branch.
"""

import pytest
import torch

from dinolab.pretrain.models import build_vit
from dinolab.pretrain.models.layers import residual_with_drop_path

RATE = 0.4


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids thread-synchronisation stalls on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _block_and_tokens(batch=10):
    model = build_vit("vit_pico", drop_path_rate=RATE, layerscale_init=1.0)
    tokens = torch.randn(batch, 5, 64)
    return model.blocks[0].train(), tokens


def test_each_sample_is_one_of_the_four_branch_cases():
    block, x = _block_and_tokens()
    batch, keep = x.shape[0], int(x.shape[0] * (1 - RATE))
    scale = batch / keep
    with torch.no_grad():
        attn_only = x + scale * block._attn_branch(x)
        ffn_only = x + scale * block._ffn_branch(x)
        both = attn_only + scale * block._ffn_branch(attn_only)
        cases = torch.stack([x, attn_only, ffn_only, both])  # [4, B, N, D]
        attn_kept = ffn_kept = 0
        for _ in range(30):
            out = block(x)
            distance = (out.unsqueeze(0) - cases).abs().amax(dim=(2, 3))  # [4, B]
            case = distance.argmin(0)
            assert torch.all(distance.min(0).values < 1e-5)
            attn_kept += int(((case == 1) | (case == 3)).sum())
            ffn_kept += int(((case == 2) | (case == 3)).sum())
    assert attn_kept == ffn_kept == 30 * keep  # exactly `keep` samples per branch and draw


def test_single_residual_is_unbiased_through_attention_branch():
    block, x = _block_and_tokens(batch=8)
    with torch.no_grad():
        expected = x + block._attn_branch(x)
        draws = 1000
        mean = sum(residual_with_drop_path(x, block._attn_branch, RATE, True) for _ in range(draws)) / draws
        branch_size = block._attn_branch(x).abs().max()
    # Monte-Carlo error of the kept frequency: sd = sqrt((1 - p) / (p · draws)) ≈ 0.026 of the branch.
    torch.testing.assert_close(mean, expected, atol=float(0.13 * branch_size), rtol=0)


def test_gradients_flow_only_through_kept_samples():
    block, x = _block_and_tokens()
    x.requires_grad_(True)
    torch.manual_seed(7)
    out = residual_with_drop_path(x, block._ffn_branch, RATE, True)
    out.square().sum().backward()
    grad_x = x.grad.clone()
    grads = {n: p.grad.clone() for n, p in block.named_parameters() if p.grad is not None}

    torch.manual_seed(7)  # replay the same draw: the kept subset is the first `keep` of a randperm
    batch, keep = x.shape[0], int(x.shape[0] * (1 - RATE))
    kept = torch.randperm(batch)[:keep]
    dropped = torch.ones(batch, dtype=torch.bool)
    dropped[kept] = False
    # Dropped samples: identity residual, d(out²)/dx = 2x exactly; no parameter sees them.
    torch.testing.assert_close(grad_x[dropped], 2 * x.detach()[dropped], atol=0, rtol=0)
    block.zero_grad()
    reference = x.detach()[kept] + (batch / keep) * block._ffn_branch(x.detach()[kept])
    reference.square().sum().backward()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, dict(block.named_parameters())[name].grad, msg=name)


@pytest.mark.parametrize("rate", [0.05])
def test_small_rates_use_a_bernoulli_mask(rate):
    block, x = _block_and_tokens()
    with torch.no_grad():
        kept_value = x + block._ffn_branch(x) / (1 - rate)
        outs = torch.stack([residual_with_drop_path(x, block._ffn_branch, rate, True) for _ in range(200)])
    is_kept = (outs - kept_value).abs().amax(dim=(2, 3)) < 1e-5
    is_dropped = (outs - x).abs().amax(dim=(2, 3)) == 0
    assert torch.all(is_kept ^ is_dropped)
    assert 0.85 < is_kept.float().mean() < 1.0  # keep probability 0.95 with 2000 draws
