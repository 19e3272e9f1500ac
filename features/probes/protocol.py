"""The probe protocol end to end: frozen features → fit a linear head → evaluate → picture.

Inputs are resized so that the shorter side is ``short_side`` (sides snapped to the patch size); targets
are resized to the same pixels (nearest), and metrics are computed there.

Example::

    train, val = split_pairs(bundled_pairs("arc2017"))
    report = run_depth_probe(model, train, val, features="lin.4")
    report.metrics  # {"rmse": ..., "abs_rel": ..., "delta1": ...}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dinolab.pretrain.models import VisionTransformer
from dinolab.features.probes.depth import DepthProbe, DepthRange, HeadKind, depth_metrics, scale_invariant_log_loss
from dinolab.features.probes.features import FeatureSpec, dense_features, depth_feature_spec, segmentation_feature_spec
from dinolab.features.probes.head import DenseLinearHead, fit_head
from dinolab.features.probes.pairs import IGNORE_INDEX, DensePair
from dinolab.features.probes.segmentation import (
    TEST_SCALES,
    confusion_matrix,
    mean_iou,
    predict_multiscale,
    segmentation_loss,
)
from dinolab.features.viz.inputs import image_to_tensor, snapped_size
from dinolab.features.viz.overlay import colorize, save_grid


@dataclass
class PreparedPair:
    """A pair at model resolution: normalised input ``[1, 3, H, W]``, display image, target ``[1, H, W]``."""

    name: str
    pixels: Tensor
    display: np.ndarray
    target: Tensor


@dataclass
class ProbeReport:
    """Evaluation metrics, the training loss per step, (name, image, target, prediction) examples, and the
    metrics of a constant prediction (training median depth, or the most frequent training class)."""

    metrics: dict[str, float]
    losses: list[float]
    examples: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    baseline: dict[str, float] = field(default_factory=dict)  # same metrics for a constant prediction


def prepare_pair(pair: DensePair, model: VisionTransformer, short_side: int) -> PreparedPair:
    pixels = image_to_tensor(pair.image, model, short_side)
    size = tuple(pixels.shape[-2:])
    image = torch.from_numpy(np.ascontiguousarray(pair.image)).permute(2, 0, 1)[None].float()
    display = F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False)
    display = display[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
    target = torch.from_numpy(np.ascontiguousarray(pair.target))[None, None].double()
    target = F.interpolate(target, size=size, mode="nearest")[0]
    target = target.float() if pair.target.dtype.kind == "f" else target.long()
    return PreparedPair(pair.name, pixels, display, target.to(pixels.device))


def run_depth_probe(
    model: VisionTransformer,
    train: list[DensePair],
    val: list[DensePair],
    features: str = "lin.1",
    head: HeadKind = "classification",
    steps: int = 300,
    lr: float = 1e-2,
    short_side: int = 224,
    progress: bool = False,
) -> ProbeReport:
    """Fit a depth probe on ``train`` and report RMSE / AbsRel / δ1 on ``val``."""
    spec = depth_feature_spec(len(model.blocks), features)
    train_prepared = [prepare_pair(p, model, short_side) for p in train]
    val_prepared = [prepare_pair(p, model, short_side) for p in val]
    train_features = [dense_features(model, p.pixels, spec) for p in train_prepared]
    depth_range = DepthRange.of([p.target for p in train_prepared])
    probe = DepthProbe(spec.channels(model.embed_dim), depth_range, head).to(train_features[0].device)
    losses = fit_head(
        probe, train_features, [p.target for p in train_prepared], scale_invariant_log_loss, steps, lr, progress
    )
    predictions, targets, examples = [], [], []
    with torch.no_grad():
        for p in val_prepared:
            prediction = probe(dense_features(model, p.pixels, spec), tuple(p.target.shape[-2:]))
            predictions.append(prediction.flatten())
            targets.append(p.target.flatten())
            examples.append((p.name, p.display, p.target[0].cpu().numpy(), prediction[0].cpu().numpy()))
    metrics = depth_metrics(torch.cat(predictions), torch.cat(targets))
    train_values = torch.cat([p.target[torch.isfinite(p.target)] for p in train_prepared])
    all_targets = torch.cat(targets)
    baseline = depth_metrics(torch.full_like(all_targets, float(train_values.median())), all_targets)
    return ProbeReport(metrics, losses, examples, baseline)


def _multiscale_features(model: VisionTransformer, pixels: Tensor, spec: FeatureSpec):
    height, width = pixels.shape[-2:]

    def features_of(scale: float, flipped: bool) -> Tensor:
        size = snapped_size(height, width, round(min(height, width) * scale), model.patch_size)
        scaled = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
        return dense_features(model, scaled.flip(-1) if flipped else scaled, spec)

    return features_of


def run_segmentation_probe(
    model: VisionTransformer,
    train: list[DensePair],
    val: list[DensePair],
    features: str = "linear",
    steps: int = 300,
    lr: float = 1e-2,
    short_side: int = 224,
    progress: bool = False,
) -> ProbeReport:
    """Fit a linear segmentation probe on ``train``; mIoU on ``val`` (``+ms``: multi-scale and flip TTA)."""
    spec = segmentation_feature_spec(len(model.blocks), features)
    train_prepared = [prepare_pair(p, model, short_side) for p in train]
    val_prepared = [prepare_pair(p, model, short_side) for p in val]
    labels = torch.cat([p.target.flatten() for p in train_prepared + val_prepared])
    labels = labels[labels != IGNORE_INDEX]
    if labels.numel() == 0:
        raise ValueError("the masks hold no labelled pixels (all 255)")
    num_classes = int(labels.max()) + 1
    train_features = [dense_features(model, p.pixels, spec) for p in train_prepared]
    head = DenseLinearHead(spec.channels(model.embed_dim), num_classes).to(train_features[0].device)
    losses = fit_head(head, train_features, [p.target for p in train_prepared], segmentation_loss, steps, lr, progress)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    examples = []
    with torch.no_grad():
        for p in val_prepared:
            size = tuple(p.target.shape[-2:])
            if features == "+ms":
                probs = predict_multiscale(head, _multiscale_features(model, p.pixels, spec), size, TEST_SCALES)
            else:
                probs = head(dense_features(model, p.pixels, spec), size)
            prediction = probs.argmax(dim=1)
            confusion += confusion_matrix(prediction.cpu(), p.target.cpu(), num_classes)
            examples.append((p.name, p.display, p.target[0].cpu().numpy(), prediction[0].cpu().numpy()))
    miou, per_class = mean_iou(confusion)
    metrics = {"miou": miou, **{f"iou_class_{c}": v for c, v in per_class.items()}}
    train_labels = torch.cat([p.target.flatten() for p in train_prepared]).cpu()
    majority = int(torch.bincount(train_labels[train_labels != IGNORE_INDEX], minlength=num_classes).argmax())
    constant = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for p in val_prepared:
        constant += confusion_matrix(torch.full_like(p.target, majority).cpu(), p.target.cpu(), num_classes)
    return ProbeReport(metrics, losses, examples, {"miou": mean_iou(constant)[0]})


def _depth_colours(values: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (np.nan_to_num(values, nan=low) - low) / max(high - low, 1e-12)
    colours = colorize(scaled, "turbo")
    colours[~np.isfinite(values)] = 128  # unknown depth in grey
    return colours


def _label_colours(labels: np.ndarray) -> np.ndarray:
    import imgviz

    shown = labels.copy()
    shown[shown == IGNORE_INDEX] = 0
    colours = imgviz.label_colormap()[shown]
    colours[labels == IGNORE_INDEX] = 255
    return colours


def render_probe(report: ProbeReport, task: str, path: str | Path, caption: str | None = None) -> Path:
    """One row per evaluation image: input | target | prediction (shared depth colour scale per row)."""
    panels, titles = [], []
    for name, image, target, prediction in report.examples:
        if task == "depth":
            known = target[np.isfinite(target)]
            low, high = (float(v) for v in np.percentile(known, [1, 99])) if known.size else (0.0, 1.0)
            drawn = [_depth_colours(target, low, high), _depth_colours(prediction, low, high)]
        else:
            drawn = [_label_colours(target), _label_colours(prediction)]
        panels += [image, *drawn]
        titles += [name, "target", "prediction"]
    return save_grid(panels, path, titles, columns=3, suptitle=caption, panel_inches=2.6)
