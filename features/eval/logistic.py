"""Multinomial logistic regression on frozen features, fitted with full-batch L-BFGS (DINOv2, App. B.3).

Minimises scikit-learn's objective ``C · Σ_i CE(W x_i + b, y_i) + ½‖W‖²`` (bias not penalised); the
loss is divided by ``C · N`` for conditioning, which leaves the minimiser unchanged. ``C`` is chosen on a
validation split carved from train, then the model is refitted on all of train with that ``C``.

Example::

    result = logistic_probe(train_x, train_y, test_x, test_y, c_grid=(0.1, 1.0, 10.0))
    result.best_c, result.test_top1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from dinolab.features.eval.linear import split_train_val

DEFAULT_C_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3)


def fit_logistic_regression(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    c: float,
    max_iter: int = 300,
    tolerance: float = 1e-6,
    initial: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Weights ``[F, C]`` and bias ``[C]`` minimising the L2-regularised cross-entropy (see module)."""
    dim = features.shape[1]
    if initial is None:
        weight = torch.zeros(dim, num_classes, dtype=features.dtype, device=features.device)
        bias = torch.zeros(num_classes, dtype=features.dtype, device=features.device)
    else:
        weight, bias = (t.detach().clone() for t in initial)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    labels = labels.long().to(features.device)
    penalty = 0.5 / (c * features.shape[0])
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tolerance,
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight + bias, labels) + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


@dataclass
class LogisticProbeResult:
    """Outcome of :func:`logistic_probe` (accuracies in percent)."""

    best_c: float
    val_top1: float
    test_top1: float
    test_top5: float
    val_grid: dict[float, float] = field(default_factory=dict)  # C → validation top-1

    def to_dict(self) -> dict:
        return {
            "best_c": self.best_c,
            "val_top1": self.val_top1,
            "test_top1": self.test_top1,
            "test_top5": self.test_top5,
            "val_grid": {str(c): acc for c, acc in self.val_grid.items()},
        }


def _top1(weight: Tensor, bias: Tensor, features: Tensor, labels: Tensor) -> float:
    predicted = (features @ weight + bias).argmax(dim=1).cpu()
    return 100.0 * (predicted == labels.long().cpu()).float().mean().item()


def logistic_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_iter: int = 300,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> LogisticProbeResult:
    """Pick ``C`` on a validation split (warm-started over the sorted grid), refit on train, test."""
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train features have dim {train_features.shape[1]}, test features {test_features.shape[1]}"
        )
    device = torch.device(device) if device is not None else train_features.device
    train_x, test_x = train_features.float().to(device), test_features.float().to(device)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    fit_index, val_index = split_train_val(train_labels.shape[0], val_fraction, seed)
    val_grid: dict[float, float] = {}
    solution = None
    for c in tqdm(sorted(c_grid), desc="logreg C grid", disable=not progress):
        solution = fit_logistic_regression(
            train_x[fit_index], train_labels[fit_index], num_classes, c, max_iter, initial=solution
        )
        val_grid[c] = _top1(*solution, train_x[val_index], train_labels[val_index])
    best_c = max(val_grid, key=val_grid.get)
    weight, bias = fit_logistic_regression(train_x, train_labels, num_classes, best_c, max_iter)
    top = (test_x @ weight + bias).topk(min(5, num_classes), dim=1).indices.cpu()
    hits = top == test_labels.long()[:, None]
    return LogisticProbeResult(
        best_c=best_c,
        val_top1=val_grid[best_c],
        test_top1=100.0 * hits[:, 0].float().mean().item(),
        test_top5=100.0 * hits.any(dim=1).float().mean().item(),
        val_grid=val_grid,
    )
