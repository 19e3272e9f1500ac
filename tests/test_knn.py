"""Weighted k-NN against a hand-computed case and scikit-learn's neighbour search."""

import math

import torch

from dinolab.pretrain.train.knn import knn_accuracy, knn_class_scores


def test_weighted_votes_hand_computed():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[2.0, 0.1]])
    scores = knn_class_scores(train, labels, test, k=2, temperature=0.5)
    cos = [2.0 / math.hypot(2.0, 0.1), (2.0 + 0.1) / (math.hypot(2.0, 0.1) * math.sqrt(2))]
    expected = torch.tensor([[math.exp(cos[0] / 0.5), math.exp(cos[1] / 0.5)]])
    torch.testing.assert_close(scores, expected)


def test_accuracy_matches_sklearn_neighbours_on_clusters():
    from sklearn.neighbors import KNeighborsClassifier

    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=generator) * 3
    labels = torch.arange(4).repeat_interleave(50)
    points = centres[labels] + torch.randn(200, 16, generator=generator)
    train, test = points[::2], points[1::2]
    train_y, test_y = labels[::2], labels[1::2]
    ours = knn_accuracy(train, train_y, test, test_y, ks=(1,))[1]["top1"]
    unit = lambda x: torch.nn.functional.normalize(x, dim=1).numpy()  # noqa: E731
    reference = KNeighborsClassifier(n_neighbors=1).fit(unit(train), train_y.numpy())
    expected = 100.0 * (reference.predict(unit(test)) == test_y.numpy()).mean()
    assert abs(ours - expected) < 1e-6
    assert ours > 90.0
