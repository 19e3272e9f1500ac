"""Weighted k-NN classification on frozen features (DINO, Sec. 4.1; Wu et al. 2018).

Each test sample votes with its ``k`` nearest training samples by cosine similarity; a neighbour with
similarity ``s`` adds ``exp(s / T)`` to its class, ``T = 0.07``.

Example::

    accuracy = knn_accuracy(train_x, train_y, test_x, test_y, ks=(10, 20))
    accuracy[20]["top1"]  # percent
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_class_scores(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    k: int,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> Tensor:
    """Class scores ``[N_test, C]`` from exp(cos/T)-weighted votes of the ``k`` nearest neighbours."""
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError(f"{train_features.shape[0]} train features but {train_labels.shape[0]} labels")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train features have dim {train_features.shape[1]}, test features {test_features.shape[1]}"
        )
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, train_features.shape[0])
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.long().to(train.device)
    scores = []
    for start in range(0, test_features.shape[0], chunk_size):
        test = F.normalize(test_features[start : start + chunk_size].float().to(train.device), dim=1)
        similarity, index = (test @ train.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(test.shape[0], num_classes, device=train.device)
        votes.scatter_add_(1, labels[index], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    ks: Sequence[int] = (10, 20),
    temperature: float = 0.07,
) -> dict[int, dict[str, float]]:
    """Top-1 / top-5 accuracy (percent) of weighted k-NN for each ``k`` in ``ks``."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    target = test_labels.long().to(train_features.device)
    results: dict[int, dict[str, float]] = {}
    for k in ks:
        scores = knn_class_scores(
            train_features, train_labels, test_features, k, temperature, num_classes
        )
        top = scores.topk(min(5, num_classes), dim=1).indices
        hits = top == target[:, None]
        results[k] = {
            "top1": 100.0 * hits[:, 0].float().mean().item(),
            "top5": 100.0 * hits.any(dim=1).float().mean().item(),
        }
    return results
