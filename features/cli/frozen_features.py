"""Options and steps shared by the commands that evaluate frozen features (knn, linear, index, search).

Not a subcommand: it loads the backbone (``--weights``), builds the evaluation transform
(``--size``/``--resize-size``), opens labelled sources (``--train``/``--val``) and extracts their
features through the on-disk cache (``--cache-dir``/``--no-cache``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dinolab.features.cli import UserError

if TYPE_CHECKING:
    from dinolab.features.eval.feature_cache import EvalFeatures
    from dinolab.features.eval.sources import LabelledSource
    from dinolab.pretrain.models import VisionTransformer


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--weights", required=required, metavar="W",
        help="backbone: a checkpoint file (released .pth, pretrain train/safetensors), a Hugging Face "
             "directory, or an architecture name for random weights (e.g. vit_small, dinov2_vits14)",
    )  # fmt: skip
    group.add_argument("--size", type=int, help="crop size fed to the model (default: the model's own)")
    group.add_argument("--resize-size", type=int, help="shorter-side resize before the crop (default: size·256/224)")
    group.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    group.add_argument("--num-workers", type=int, default=0, help="image-decoding worker processes (default 0)")
    group.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("feature cache")
    group.add_argument("--cache-dir", type=Path, help="where features are cached (default ~/.cache/dinolab/features)")
    group.add_argument("--no-cache", action="store_true", help="always re-extract and do not write the cache")


def add_labelled_data_arguments(parser: argparse.ArgumentParser, feature_files: bool = False) -> None:
    """``--train``/``--val`` sources; with ``feature_files`` also ``--train-features``/``--val-features``."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--train", required=not feature_files,
        help="training data: 'fashion-mnist', a folder with one subfolder per class, or a file list "
             "of 'path<TAB>label' lines",
    )  # fmt: skip
    group.add_argument("--val", required=not feature_files, help="evaluation data, same forms as --train")
    group.add_argument("--train-split", default="train", choices=("train", "test"), help="Fashion-MNIST split of --train")
    group.add_argument("--val-split", default="test", choices=("train", "test"), help="Fashion-MNIST split of --val")
    group.add_argument("--train-limit", type=int, help="use only the first N training images")
    group.add_argument("--val-limit", type=int, help="use only the first N evaluation images")
    if feature_files:
        files = parser.add_argument_group("or precomputed features (instead of --weights/--train/--val)")
        files.add_argument("--train-features", type=Path, metavar="FILE", help="labelled file from `features extract`")
        files.add_argument("--val-features", type=Path, metavar="FILE", help="labelled file from `features extract`")


def check_positive(args: argparse.Namespace, *flags: str) -> None:
    """Every named option that is set must be a positive number (``--num-workers`` may be 0)."""
    for flag in flags:
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if getattr(args, "num_workers", 0) < 0:
        raise UserError(f"--num-workers must be 0 or more, got {args.num_workers}")


def resolve_device(name: str | None) -> Any:
    """The torch device for ``--device`` (None or "auto": CUDA when present, else CPU)."""
    import torch

    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"unknown --device {name!r} (use cpu, cuda or cuda:N)") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is available")
    return device


def load_model(weights: str, device: Any) -> "VisionTransformer":
    """The backbone named by ``--weights`` in eval mode on ``device``; any loading problem is a UserError."""
    from dinolab.pretrain.checkpoints import load_backbone

    try:
        model = load_backbone(weights)
    except (ValueError, OSError, KeyError, RuntimeError) as error:
        raise UserError(f"cannot load --weights {weights}: {error}") from error
    return model.to(device).eval()


def make_transform(model: "VisionTransformer", size: int | None, resize_size: int | None) -> tuple[Any, dict]:
    """The evaluation transform and a JSON description of it (part of cache keys and index files)."""
    from dinolab.pretrain.data import eval_sizes, eval_transform

    pre = model.preprocessing
    try:
        transform = eval_transform(pre, size=size, resize_size=resize_size, patch_size=model.patch_size)
        resize, crop = eval_sizes(pre, size, resize_size)
    except ValueError as error:
        raise UserError(str(error)) from error
    description = {
        "resize_size": resize, "input_size": crop, "mean": list(pre.mean), "std": list(pre.std),
        "interpolation": pre.interpolation,
    }  # fmt: skip
    return transform, description


def open_labelled(spec: str, split: str, transform: Any, args: argparse.Namespace, limit: int | None) -> "LabelledSource":
    from dinolab.pretrain.data import DatasetError
    from dinolab.features.eval.sources import open_source

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    try:
        return open_source(spec, split, transform, args.batch_size, limit, args.num_workers)
    except DatasetError as error:
        raise UserError(str(error)) from error


def features_of(
    model: "VisionTransformer",
    fingerprint: str,
    source: "LabelledSource",
    preprocessing: dict,
    args: argparse.Namespace,
    label: str,
) -> "EvalFeatures":
    """Features of ``source``: loaded from the cache when the same model/data/preprocessing ran before."""
    from dinolab.pretrain.data import DatasetError
    from dinolab.features.eval.feature_cache import FeatureCache, cache_key, default_cache_dir, extract_eval_features

    cache = FeatureCache(args.cache_dir or default_cache_dir())
    key = cache_key(fingerprint, source.description, preprocessing)
    features = None if args.no_cache else cache.load(key)
    if features is not None:
        print(f"{label}: {len(features)} cached features ({cache.path(key)})", file=sys.stderr)
    else:
        try:
            features = extract_eval_features(model, source.batches, device=args.device, description=label)
        except (ValueError, DatasetError) as error:
            raise UserError(f"{label}: {error}") from error
        if not args.no_cache:
            cache.save(key, features)
    if features.skipped:
        shown = ", ".join(name for name, _ in features.skipped[:3])
        print(f"{label}: skipped {len(features.skipped)} unreadable images ({shown}...)", file=sys.stderr)
    return features


def labelled_train_val(args: argparse.Namespace) -> tuple["EvalFeatures", "EvalFeatures", list[str]]:
    """Features and labels of ``--train`` and ``--val`` (val labels re-indexed to the train classes),
    or of ``--train-features`` and ``--val-features`` when given."""
    import torch

    from dinolab.pretrain.data import DatasetError
    from dinolab.features.eval.feature_cache import model_fingerprint
    from dinolab.features.eval.sources import align_labels

    check_positive(args, "batch_size", "size", "resize_size", "train_limit", "val_limit")
    args.device = resolve_device(args.device)
    if getattr(args, "train_features", None) or getattr(args, "val_features", None):
        return feature_files_train_val(args)
    missing = [flag for flag in ("weights", "train", "val") if not getattr(args, flag)]
    if missing:
        raise UserError(
            f"missing --{', --'.join(missing)} (or give --train-features and --val-features instead)"
        )
    model = load_model(args.weights, args.device)
    transform, preprocessing = make_transform(model, args.size, args.resize_size)
    fingerprint = model_fingerprint(model)
    train_source = open_labelled(args.train, args.train_split, transform, args, args.train_limit)
    val_source = open_labelled(args.val, args.val_split, transform, args, args.val_limit)
    try:  # check the class names before any extraction
        align_labels(torch.zeros(0, dtype=torch.long), val_source.classes, train_source.classes)
    except DatasetError as error:
        raise UserError(str(error)) from error
    train = features_of(model, fingerprint, train_source, preprocessing, args, "train")
    val = features_of(model, fingerprint, val_source, preprocessing, args, "val")
    val.labels = align_labels(val.labels, val_source.classes, train_source.classes)
    if train.labels.unique().numel() < 2:
        raise UserError(f"--train {args.train}: needs at least two classes, found {train.labels.unique().tolist()}")
    return train, val, train_source.classes


def _read_labelled_features(path: Path, flag: str) -> tuple["EvalFeatures", dict]:
    from dinolab.features.eval.feature_cache import EvalFeatures
    from dinolab.features.store import FeatureFileError, load_features

    try:
        stored = load_features(path)
    except FeatureFileError as error:
        raise UserError(f"{flag}: {error}") from error
    if stored.labels is None or bool((stored.labels < 0).any()):
        raise UserError(
            f"{flag} {path}: labels are missing; extract from a labelled source "
            "(fashion-mnist, class subfolders, or a 'path<TAB>label' list)"
        )
    features = EvalFeatures(stored.cls[:, None], stored.patch_mean, stored.labels, stored.names, stored.skipped)
    return features, stored.info


def feature_files_train_val(args: argparse.Namespace) -> tuple["EvalFeatures", "EvalFeatures", list[str]]:
    """Labelled features from two ``features extract`` files made by the same model and preprocessing."""
    from dinolab.pretrain.data import DatasetError
    from dinolab.features.eval.sources import align_labels

    if not (args.train_features and args.val_features):
        raise UserError("give both --train-features and --val-features")
    if args.weights or args.train or args.val:
        raise UserError("use either --weights/--train/--val or --train-features/--val-features, not both")
    train, train_info = _read_labelled_features(args.train_features, "--train-features")
    val, val_info = _read_labelled_features(args.val_features, "--val-features")
    if train.cls.shape[1] != val.cls.shape[1]:
        raise UserError(
            f"features of different dims: {args.train_features} has {train.cls.shape[1]}, "
            f"{args.val_features} has {val.cls.shape[1]} (extract both with the same model)"
        )
    for part in ("model", "preprocessing"):
        if train_info.get(part) and val_info.get(part) and train_info[part] != val_info[part]:
            raise UserError(
                f"mismatched feature files: {args.train_features} and {args.val_features} were extracted "
                f"with a different {part} ({train_info[part]} vs {val_info[part]})"
            )
    train_classes = list(train_info.get("dataset", {}).get("classes") or [])
    val_classes = list(val_info.get("dataset", {}).get("classes") or [])
    try:
        val.labels = align_labels(val.labels, val_classes, train_classes)
    except DatasetError as error:
        raise UserError(str(error)) from error
    return train, val, train_classes
