"""Labelled evaluation sets for k-NN during and after pretraining: Fashion-MNIST train as the memory bank,
test as the queries, as uint8 image tensors.

Example::

    eval_data = fashion_mnist_eval(build_config("fmnist-tiny"))
    memory_bank, queries = eval_data.final
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from dinolab.pretrain.data.fashion_mnist import load_fashion_mnist

if TYPE_CHECKING:
    from dinolab.pretrain.train.config import TrainConfig


@dataclass
class LabelledSplit:
    """Labelled images for k-NN evaluation: uint8 ``[N, C, S, S]`` and int64 labels ``[N]``."""

    images: Tensor
    labels: Tensor


@dataclass
class EvalData:
    """Labelled data for k-NN: a fixed subset for periodic checks, the full splits for the final one."""

    periodic: tuple[LabelledSplit, LabelledSplit]
    final: tuple[LabelledSplit, LabelledSplit]


def fashion_mnist_eval_splits(train_limit: int | None = None,
                              test_limit: int | None = None) -> tuple[LabelledSplit, LabelledSplit]:
    """Fashion-MNIST train (k-NN memory bank) and test (queries) splits."""
    train_images, train_labels = load_fashion_mnist("train", limit=train_limit)
    test_images, test_labels = load_fashion_mnist("test", limit=test_limit)
    return (LabelledSplit(train_images.unsqueeze(1), train_labels),
            LabelledSplit(test_images.unsqueeze(1), test_labels))


def _first(split: LabelledSplit, count: int | None) -> LabelledSplit:
    return split if count is None else LabelledSplit(split.images[:count], split.labels[:count])


def fashion_mnist_eval(config: TrainConfig) -> EvalData:
    """Fashion-MNIST train split as the k-NN memory bank, test split as queries (fixed first-N subsets
    sized by ``config.run``)."""
    run = config.run
    train_split, test_split = fashion_mnist_eval_splits()
    periodic = (_first(train_split, run.eval_train_subset), _first(test_split, run.eval_test_subset))
    final = (_first(train_split, run.final_eval_train_limit), _first(test_split, run.final_eval_test_limit))
    return EvalData(periodic, final)
