"""DINO, iBOT, KoLeo and Sinkhorn-Knopp against hand-computed numpy values and lightly's losses."""

import numpy as np
import pytest
import torch

from dinolab.pretrain.train.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss, sinkhorn_knopp


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    return np.log(_softmax(x))


def _numpy_sinkhorn(logits: np.ndarray, temp: float, iters: int) -> np.ndarray:
    """SwAV Algorithm: Q = exp(L/τ)ᵀ, normalise total, then alternate prototype/sample rescaling."""
    q = np.exp(logits.astype(np.float64) / temp).T  # [K, B]
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(axis=1, keepdims=True) / k
        q = q / q.sum(axis=0, keepdims=True) / b
    return (q * b).T


# ----------------------------------------------------------------------------------------- DINO


def test_dino_loss_matches_explicit_pair_loop():
    rng = np.random.default_rng(0)
    batch, k, n_global, n_local = 3, 7, 2, 3
    student = [rng.normal(size=(batch, k)).astype(np.float32) for _ in range(n_global + n_local)]
    teacher = [_softmax(rng.normal(size=(batch, k)) / 0.3).astype(np.float32) for _ in range(n_global)]
    expected, pairs = 0.0, 0
    for i, s in enumerate(student):
        for j, t in enumerate(teacher):
            if i == j:
                continue
            per_sample = [-(t[b] * _log_softmax(s[b] / 0.1)).sum() for b in range(batch)]
            expected += np.mean(per_sample)
            pairs += 1
    expected /= pairs
    assert pairs == 2 * 5 - 2
    loss = DINOLoss(k)([torch.from_numpy(s) for s in student], [torch.from_numpy(t) for t in teacher])
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_softmax_center_teacher_and_update_center_by_hand():
    loss_fn = DINOLoss(4, center_momentum=0.9)
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 2.0, -2.0]])
    loss_fn.center.copy_(torch.tensor([[0.5, 0.0, 1.0, 0.0]]))
    probs = loss_fn.softmax_center_teacher(logits, teacher_temp=0.5)
    expected = _softmax((logits.numpy() - np.array([[0.5, 0.0, 1.0, 0.0]])) / 0.5)
    np.testing.assert_allclose(probs.numpy(), expected, rtol=1e-6)
    loss_fn.update_center(logits)
    batch_mean = np.array([0.5, 1.0, 2.5, 1.0])
    np.testing.assert_allclose(loss_fn.center.numpy()[0], 0.9 * np.array([0.5, 0, 1, 0]) + 0.1 * batch_mean)


def test_forward_has_no_side_effect_on_center():
    loss_fn = DINOLoss(5)
    before = loss_fn.center.clone()
    logits = [torch.randn(2, 5) for _ in range(2)]
    loss_fn([torch.randn(2, 5) for _ in range(4)], [loss_fn.softmax_center_teacher(t, 0.04) for t in logits])
    assert torch.equal(loss_fn.center, before)


def test_dino_loss_agrees_with_lightly():
    lightly_loss = pytest.importorskip("lightly.loss")
    torch.manual_seed(3)
    batch, k = 4, 16
    teacher = [torch.randn(batch, k) for _ in range(2)]
    student = [torch.randn(batch, k) for _ in range(6)]
    center = torch.randn(1, k) * 0.1
    ours = DINOLoss(k)
    ours.center.copy_(center)
    reference = lightly_loss.DINOLoss(output_dim=k, teacher_temp=0.07, student_temp=0.1)
    reference.center.copy_(center.unsqueeze(0))
    expected = reference(teacher, student, teacher_temp=0.07)
    got = ours(student, [ours.softmax_center_teacher(t, 0.07) for t in teacher])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    ours.update_center(torch.cat(teacher))  # lightly updates inside forward; ours explicitly
    torch.testing.assert_close(ours.center, reference.center.reshape(1, k), rtol=1e-5, atol=1e-6)


def test_dino_loss_needs_a_cross_view_pair():
    with pytest.raises(ValueError):
        DINOLoss(4)([torch.randn(2, 4)], [torch.softmax(torch.randn(2, 4), -1)])


def test_dino_loss_gradient_flows_to_student_only():
    student = [torch.randn(2, 6, requires_grad=True) for _ in range(3)]
    teacher = [torch.softmax(torch.randn(2, 6), -1) for _ in range(2)]
    DINOLoss(6)(student, teacher).backward()
    assert all(s.grad is not None and torch.isfinite(s.grad).all() for s in student)


# ------------------------------------------------------------------------------------- Sinkhorn


def test_sinkhorn_matches_numpy_rederivation_and_marginals():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(12, 5)).astype(np.float32)
    q = sinkhorn_knopp(torch.from_numpy(logits), teacher_temp=0.5, n_iterations=3)
    expected = _numpy_sinkhorn(logits, 0.5, 3)
    np.testing.assert_allclose(q.numpy(), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(q.sum(dim=1).numpy(), np.ones(12), rtol=1e-5)  # each sample: a distribution
    # Prototype marginals approach the uniform B/K after a few iterations (exact in the limit).
    q_many = sinkhorn_knopp(torch.from_numpy(logits), teacher_temp=0.5, n_iterations=200)
    np.testing.assert_allclose(q_many.sum(dim=0).numpy(), np.full(5, 12 / 5), rtol=1e-4)


def test_sinkhorn_is_finite_at_tiny_temperature():
    logits = torch.rand(8, 6) * 2 - 1  # cosine logits, as the head produces
    assert not torch.isfinite(torch.exp(logits.max() / 0.01))  # a naive exp would overflow fp32
    q = sinkhorn_knopp(logits, teacher_temp=0.01)
    assert torch.isfinite(q).all()
    np.testing.assert_allclose(q.sum(dim=1).numpy(), np.ones(8), rtol=1e-5)


def test_sinkhorn_uses_given_sample_count():
    logits = torch.randn(6, 4)
    q = sinkhorn_knopp(logits, 0.2, n_samples=torch.tensor(6))
    torch.testing.assert_close(q, sinkhorn_knopp(logits, 0.2))
    # A different sample count rescales the per-sample mass but rows still come out as distributions.
    q_half = sinkhorn_knopp(logits, 0.2, n_samples=12)
    torch.testing.assert_close(q_half.sum(dim=1), torch.full((6,), 1.0))


# ----------------------------------------------------------------------------------------- iBOT


def test_ibot_loss_matches_hand_computation():
    rng = np.random.default_rng(2)
    masks = np.zeros((3, 4), dtype=bool)
    masks[0, [0, 2]] = True  # 2 masked patches
    masks[2, [1, 2, 3]] = True  # 3 masked patches; image 1 unmasked
    m, k = masks.sum(), 6
    student = rng.normal(size=(m, k)).astype(np.float32)
    teacher = _softmax(rng.normal(size=(m, k))).astype(np.float32)
    per_patch = -(teacher * _log_softmax(student / 0.1)).sum(axis=-1)
    image_means = [per_patch[:2].mean(), per_patch[2:].mean()]
    weights = torch.tensor([0.5, 0.5, 1 / 3, 1 / 3, 1 / 3])
    loss_fn = IBOTPatchLoss(k)
    loss = loss_fn.forward_masked(torch.from_numpy(student), torch.from_numpy(teacher), weights)
    assert loss.item() == pytest.approx(np.mean(image_means), rel=1e-5)
    # Released DINOv2 normalisation: divide by all images (3), masked or not.
    released = loss_fn.forward_masked(torch.from_numpy(student), torch.from_numpy(teacher), weights, n_images=3)
    assert released.item() == pytest.approx(np.sum(image_means) / 3, rel=1e-5)


def test_ibot_empty_mask_gives_zero():
    loss = IBOTPatchLoss(4).forward_masked(torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0))
    assert loss.item() == 0.0


def test_ibot_loss_agrees_with_lightly_under_its_convention():
    lightly_loss = pytest.importorskip("lightly.loss")
    torch.manual_seed(4)
    masks = torch.zeros(4, 3, 3, dtype=torch.bool)
    masks[0, 0, :2] = True
    masks[1, 1:, 1:] = True
    masks[3, 2, 2] = True
    m, k = int(masks.sum()), 10
    teacher_logits, student_logits = torch.randn(m, k), torch.randn(m, k)
    reference = lightly_loss.IBOTPatchLoss(output_dim=k, teacher_temp=0.07, student_temp=0.1)
    expected = reference(teacher_logits, student_logits, masks, teacher_temp=0.07)
    counts = masks.flatten(1).sum(1).float()
    weights = (1.0 / counts).repeat_interleave(counts.long())
    ours = IBOTPatchLoss(k)
    got = ours.forward_masked(student_logits, ours.softmax_center_teacher(teacher_logits, 0.07), weights, n_images=4)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)  # lightly divides by all images


def test_ibot_sinkhorn_teacher_rows_are_distributions():
    q = IBOTPatchLoss(5).sinkhorn_knopp_teacher(torch.randn(7, 5), 0.07, n_masked_patches_tensor=torch.tensor(7))
    torch.testing.assert_close(q.sum(dim=1), torch.ones(7))


# ---------------------------------------------------------------------------------------- KoLeo


def test_koleo_matches_brute_force_numpy():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 4))
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    nn_dist = [min(np.linalg.norm(z[i] - z[j]) for j in range(6) if j != i) for i in range(6)]
    expected = -np.mean(np.log(np.array(nn_dist) + 1e-8))
    assert KoLeoLoss()(torch.tensor(x, dtype=torch.float32)).item() == pytest.approx(expected, rel=1e-4)


def test_koleo_agrees_with_lightly():
    lightly_loss = pytest.importorskip("lightly.loss")
    x = torch.randn(9, 5)
    torch.testing.assert_close(KoLeoLoss()(x), lightly_loss.KoLeoLoss()(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["single", "pair", "duplicates", "antipodal_pair"])
def test_koleo_is_finite_in_degenerate_batches(case):
    if case == "single":
        x = torch.randn(1, 4)
    elif case == "pair":
        x = torch.randn(2, 4)
    elif case == "duplicates":
        x = torch.randn(1, 4).repeat(3, 1)
    else:
        v = torch.randn(1, 4)
        x = torch.cat([v, -v])
    x.requires_grad_(True)
    loss = KoLeoLoss()(x)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    if case == "single":
        assert loss.item() == 0.0
    if case == "pair":
        z = torch.nn.functional.normalize(x.detach(), dim=-1)
        assert loss.item() == pytest.approx(-np.log((z[0] - z[1]).norm().item() + 1e-8), rel=1e-4)
    if case == "antipodal_pair":
        assert loss.item() == pytest.approx(-np.log(2.0), abs=1e-4)  # the other point, not itself
