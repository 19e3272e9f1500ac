"""Linear-probe head grid (one pass = separate training) and L-BFGS logistic regression vs scikit-learn."""

import torch
import torch.nn.functional as F

from dinolab.features.eval.linear import (
    FEATURE_VARIANTS,
    batch_order,
    cosine_factor,
    linear_probe,
    train_head_grid,
    variant_features,
)
from dinolab.features.eval.logistic import fit_logistic_regression, logistic_probe


def _clusters(num_classes: int, per_class: int, dim: int, spread: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=generator) * 3
    labels = torch.arange(num_classes).repeat(per_class)
    return centres[labels] + spread * torch.randn(labels.shape[0], dim, generator=generator), labels


def test_variant_features_concatenate_last_blocks_and_patch_mean():
    cls_layers = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    patch_mean = -torch.ones(2, 3)
    assert torch.equal(variant_features(cls_layers, patch_mean, "cls1"), cls_layers[:, 3])
    expected = torch.cat([cls_layers.flatten(1), patch_mean], dim=1)
    assert torch.equal(variant_features(cls_layers, patch_mean, "cls4+avg"), expected)
    assert set(FEATURE_VARIANTS) == {"cls1", "cls1+avg", "cls4", "cls4+avg"}


def test_one_pass_grid_equals_training_each_head_separately():
    features, labels = _clusters(3, 20, 6, 1.0, seed=1)
    variants = [features, torch.cat([features, features.square()], dim=1)]
    lrs, epochs, batch_size = (0.01, 0.1, 1.0), 3, 16
    grid = train_head_grid(variants, labels, 3, lrs, epochs, batch_size, seed=5)
    initial = train_head_grid(variants, labels, 3, lrs, epochs=0, batch_size=batch_size, seed=5)
    total_steps = epochs * -(-labels.shape[0] // batch_size)
    for v, x in enumerate(variants):
        dim = x.shape[1]
        for i, lr in enumerate(lrs):
            head = torch.nn.Linear(dim, 3)
            with torch.no_grad():
                head.weight.copy_(initial.weight[v, i, :dim].T)
                head.bias.copy_(initial.bias[v, i])
            optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_factor(s, total_steps))
            for index in batch_order(labels.shape[0], batch_size, epochs, seed=5):
                optimizer.zero_grad()
                F.cross_entropy(head(x[index]), labels[index]).backward()
                optimizer.step()
                schedule.step()
            torch.testing.assert_close(grid.weight[v, i, :dim], head.weight.detach().T, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(grid.bias[v, i], head.bias.detach(), atol=1e-5, rtol=1e-4)
            assert torch.count_nonzero(grid.weight[v, i, dim:]) == 0  # padding stays untouched


def test_linear_probe_separable_reaches_full_accuracy_and_sensible_lr():
    features, labels = _clusters(4, 60, 8, 0.3, seed=2)
    noise = torch.randn(features.shape, generator=torch.Generator().manual_seed(3)) * 50
    train = {"signal": features[:160], "noise": noise[:160]}
    test = {"signal": features[160:], "noise": noise[160:]}
    result = linear_probe(
        train, labels[:160], test, labels[160:], learning_rates=(1e-6, 1e-2, 0.1), epochs=15,
        batch_size=32,
    )
    assert result.best_variant == "signal"
    assert result.best_lr > 1e-6  # a vanishing lr cannot move the zero-ish start
    assert result.test_top1 == 100.0 and result.test_top5 == 100.0
    assert result.val_grid["signal"][1e-6] < 60.0


def test_logistic_regression_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    features, labels = _clusters(3, 30, 5, 2.5, seed=4)
    features = features.double()
    for c in (0.05, 1.0):
        weight, bias = fit_logistic_regression(features, labels, 3, c, max_iter=500, tolerance=1e-9)
        reference = LogisticRegression(C=c, max_iter=10_000, tol=1e-12).fit(features.numpy(), labels.numpy())
        ours = torch.softmax(features @ weight + bias, dim=1)
        theirs = torch.from_numpy(reference.predict_proba(features.numpy()))
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_logistic_probe_picks_c_and_classifies_clusters():
    features, labels = _clusters(3, 40, 6, 0.5, seed=6)
    result = logistic_probe(features[:90], labels[:90], features[90:], labels[90:], c_grid=(1e-4, 0.1))
    assert result.best_c == 0.1
    assert result.test_top1 == 100.0
