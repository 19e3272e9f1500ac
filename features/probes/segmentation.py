"""Semantic segmentation from frozen features: a linear head trained with cross-entropy (DINOv2 §7.4).

``linear`` uses the last block's patch tokens; ``+ms`` the last four blocks and, at test time, the
average of softmax outputs over rescaled (0.5…1.5×) and horizontally flipped inputs. Label 255 is
"ignore". mIoU is the mean over classes present in the target or the prediction of
``|P_c ∩ T_c| / |P_c ∪ T_c|``, accumulated over all evaluated pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dinolab.features.probes.head import DenseLinearHead

IGNORE_INDEX = 255
TEST_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)


def segmentation_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Pixel-wise cross-entropy, ignoring label 255."""
    return F.cross_entropy(logits, target.long(), ignore_index=IGNORE_INDEX)


def confusion_matrix(prediction: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``[K, K]`` counts (rows: target class, columns: predicted class), ignored pixels left out."""
    keep = target != IGNORE_INDEX
    pairs = target[keep].long() * num_classes + prediction[keep].long()
    return torch.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes)


def mean_iou(confusion: Tensor) -> tuple[float, dict[int, float]]:
    """mIoU and per-class IoU from a confusion matrix, over classes with a non-empty union."""
    confusion = confusion.double()
    intersection = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    if not present.any():
        raise ValueError("no labelled pixels to evaluate on")
    per_class = {int(c): float(intersection[c] / union[c]) for c in torch.nonzero(present).flatten()}
    return float(np.mean(list(per_class.values()))), per_class


@torch.no_grad()
def predict_multiscale(
    head: DenseLinearHead,
    features_of: Callable[[float, bool], Tensor],
    size: tuple[int, int],
    scales: Sequence[float] = TEST_SCALES,
) -> Tensor:
    """Class probabilities ``[B, K, H, W]`` averaged over scales and flips.

    ``features_of(scale, flipped)`` returns the feature map of the input rescaled (and flipped).
    """
    total = None
    for scale in scales:
        for flipped in (False, True):
            probs = head(features_of(scale, flipped), size).softmax(dim=1)
            probs = probs.flip(-1) if flipped else probs
            total = probs if total is None else total + probs
    return total / (2 * len(scales))
