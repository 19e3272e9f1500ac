"""``features extract``: frozen-backbone features of an image folder, a file list or Fashion-MNIST.

Writes a feature file (see :mod:`features.store`). Unreadable images are skipped with a
warning and counted, never fatal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

FASHION_MNIST = "fashion-mnist"
SKIPPED_SHOWN = 5

EPILOG = """examples:
  features extract --weights dinov2_vits14.pth --images photos/ --out photos.safetensors --patch-mean
  features extract --weights model.safetensors --images list.txt --size 448 --out feats.safetensors
  features extract --arch vit_pico --patch-size 4 --size 28 --resize-size 28 \\
      --images fashion-mnist --split test --limit 1000 --out fmnist_test.safetensors

A file list has one image path per line (relative to the list's folder), optionally a tab and a label.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="compute CLS (and mean patch) features of images into a feature file",
        description="Run a frozen backbone over images and save their normed CLS features (and optionally "
        "the mean patch token) with names and labels to a safetensors feature file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--weights", help="checkpoint file, folder or released name (pretrain.checkpoints)")
    model.add_argument("--arch", help="architecture name with random weights (see 'pretrain info')")
    parser.add_argument("--patch-size", type=int, help="with --arch: override the patch size (e.g. 4 for 28 px)")
    parser.add_argument("--seed", type=int, default=0, help="with --arch: seed of the random weights (default 0)")
    parser.add_argument(
        "--images", required=True, help=f"image folder (recursive), file list (.txt), or '{FASHION_MNIST}'"
    )
    parser.add_argument("--split", choices=("train", "test"), default="train", help="Fashion-MNIST split")
    parser.add_argument("--fashion-mnist-dir", type=Path, help="folder with the four Fashion-MNIST .gz files")
    parser.add_argument("--class-subfolders", action="store_true", help="label images by first-level subfolder")
    parser.add_argument("--limit", type=int, help="use only the first N images (sorted order)")
    parser.add_argument("--out", required=True, type=Path, help="feature file to write (.safetensors)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--size", type=int, help="crop size (multiple of the patch size; default: model's)")
    parser.add_argument("--resize-size", type=int, help="shorter-side resize before the crop (default: size·256/224)")
    parser.add_argument("--max-side", type=int, help="downsize larger images while decoding (faster on huge photos)")
    parser.add_argument("--patch-mean", action="store_true", help="also store the mean patch token")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1... (default: cuda if available)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader decoding processes (default 0)")
    parser.add_argument(
        "--compile", action="store_true",
        help="torch.compile the backbone (CPU: inductor freezing) after a one-off compile of tens of seconds "
        "or more; on the project's 2-core CPU it measured within noise of eager (benchmarks/extract.py "
        "--compile), so try it on large jobs only",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dinolab.features.cli import UserError
    from dinolab.features.cli.frozen_features import resolve_device
    from dinolab.pretrain.data import DatasetError, eval_sizes, eval_transform
    from dinolab.features import extract_features, save_features

    _check_numbers(args)
    device = resolve_device(args.device)
    model, model_info = _load_model(args)
    pre = model.preprocessing
    try:
        resize_size, input_size = eval_sizes(pre, args.size, args.resize_size, model.patch_size)
        transform = eval_transform(pre, size=args.size, resize_size=args.resize_size, patch_size=model.patch_size)
    except ValueError as error:
        raise UserError(str(error)) from error
    try:
        data, dataset_info = _dataset(args, transform)
    except (DatasetError, ValueError) as error:
        raise UserError(str(error)) from error
    info = {
        "model": model_info,
        "preprocessing": {
            "resize_size": resize_size,
            "input_size": input_size,
            "mean": list(pre.mean),
            "std": list(pre.std),
            "interpolation": pre.interpolation,
        },
        "dataset": dataset_info,
    }
    features = extract_features(
        model,
        data,
        batch_size=args.batch_size,
        pooled_patches=args.patch_mean,
        device=device,
        num_workers=args.num_workers,
        progress=not args.quiet,
        info=info,
        compile=args.compile,
    )
    _report_skipped(features.skipped)
    if len(features) == 0:
        raise UserError("no image could be read; nothing written")
    save_features(args.out, features)
    shape = "x".join(str(n) for n in features.cls.shape)
    extra = " + patch_mean" if features.patch_mean is not None else ""
    print(f"wrote {len(features)} features (cls {shape}{extra}) to {args.out}", file=sys.stderr)
    return 0


def _check_numbers(args: argparse.Namespace) -> None:
    from dinolab.features.cli import UserError

    for flag in ("batch_size", "limit", "size", "resize_size", "max_side", "patch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    if args.num_workers < 0:
        raise UserError(f"--num-workers must be 0 or more, got {args.num_workers}")
    if args.out.is_dir():
        raise UserError(f"--out {args.out} is a folder; give a file name such as features.safetensors")
    if args.patch_size is not None and args.arch is None:
        raise UserError("--patch-size only applies to --arch (a checkpoint fixes its patch size)")


def _load_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    import torch

    from dinolab.features.cli import UserError

    if args.weights:
        from dinolab.pretrain.checkpoints import load_backbone

        try:
            model = load_backbone(args.weights)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise UserError(f"cannot load a backbone from {args.weights}: {error}") from error
        source = {"weights": str(Path(args.weights).resolve()) if Path(args.weights).exists() else args.weights}
    else:
        from dinolab.pretrain.models import build_vit

        overrides = {} if args.patch_size is None else {"patch_size": args.patch_size}
        torch.manual_seed(args.seed)
        try:
            model = build_vit(args.arch, **overrides)
        except (ValueError, TypeError) as error:
            raise UserError(str(error)) from error
        source = {"arch": args.arch, "seed": args.seed, "random_init": True}
        print(f"warning: --arch {args.arch} has random weights (pass --weights for a trained model)", file=sys.stderr)
    return model.eval(), {**source, "config": model.config.to_dict()}


def _dataset(args: argparse.Namespace, transform: Any) -> tuple[Any, dict[str, Any]]:
    from torch.utils.data import Subset

    from dinolab.pretrain.data import FASHION_MNIST_CLASSES, ImageFolder, TensorBatches, load_fashion_mnist

    if args.images == FASHION_MNIST:
        images, labels = load_fashion_mnist(args.split, args.fashion_mnist_dir, args.limit)
        names = [f"{args.split}/{index}" for index in range(len(labels))]
        batches = TensorBatches(images, labels, names, args.batch_size, transform)
        info = {"kind": FASHION_MNIST, "split": args.split, "classes": list(FASHION_MNIST_CLASSES)}
        return batches, info
    dataset = ImageFolder(args.images, class_subfolders=args.class_subfolders, transform=transform, max_side=args.max_side)
    kind = "folder" if Path(args.images).is_dir() else "file_list"
    info = {"kind": kind, "root": str(dataset.root.resolve()), "classes": dataset.classes}
    if args.limit is not None and args.limit < len(dataset):
        return Subset(dataset, range(args.limit)), info
    return dataset, info


def _report_skipped(skipped: list[tuple[str, str]]) -> None:
    if not skipped:
        return
    shown = "; ".join(f"{name} ({reason})" for name, reason in skipped[:SKIPPED_SHOWN])
    more = f"; and {len(skipped) - SKIPPED_SHOWN} more" if len(skipped) > SKIPPED_SHOWN else ""
    print(f"warning: skipped {len(skipped)} unreadable images: {shown}{more}", file=sys.stderr)
