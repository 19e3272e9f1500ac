"""``features finetune``: fine-tune the whole backbone with a linear head; save it and report accuracy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dinolab.features.cli import UserError
from dinolab.features.cli.frozen_features import add_labelled_data_arguments, add_model_arguments

EXAMPLES = """examples:
  features finetune --weights run/checkpoint.pth --train fashion-mnist --val fashion-mnist --size 28 \\
      --epochs 5 --out finetuned/
  features finetune --weights dinov2_vits14.pth --train photos/train --val photos/val --lr 1e-4 --out ft/
The fine-tuned backbone (finetuned/backbone.safetensors) loads in every other dinolab command.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune the backbone with a linear classification head",
        description="Full fine-tuning for the best downstream accuracy: AdamW, warm-up + cosine learning "
        "rate, layer-wise lr decay, drop path, label smoothing, random-resized-crop + flip augmentation. "
        "Writes backbone.safetensors, head.safetensors and result.json to --out.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    add_labelled_data_arguments(parser)
    group = parser.add_argument_group("fine-tuning")
    group.add_argument("--out", required=True, type=Path, help="directory for the fine-tuned model")
    group.add_argument("--epochs", type=int, default=10, help="(default 10)")
    group.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of the head (default 5e-4)")
    group.add_argument("--layer-decay", type=float, default=0.75, help="lr factor per block below (default 0.75)")
    group.add_argument("--weight-decay", type=float, default=0.05, help="(default 0.05)")
    group.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate (default 0.1)")
    group.add_argument("--warmup-epochs", type=float, default=1.0, help="(default 1)")
    group.add_argument("--label-smoothing", type=float, default=0.1, help="(default 0.1)")
    group.add_argument("--min-scale", type=float, default=0.35, help="random-resized-crop minimum area (default 0.35)")
    group.add_argument("--patch-mean", action="store_true", help="head sees CLS + mean patch token")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--overwrite", action="store_true", help="replace a fine-tuned model already in --out")
    parser.set_defaults(func=run)


def train_transform(preprocessing, size: int, min_scale: float):
    """Light augmentation: random resized crop (bicubic) + horizontal flip, then normalise."""
    import torch
    from torchvision.transforms import InterpolationMode, v2

    return v2.Compose([
        v2.RGB(),
        v2.RandomResizedCrop(size, scale=(min_scale, 1.0), interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(preprocessing.mean), std=list(preprocessing.std)),
    ])  # fmt: skip


def training_batches(args: argparse.Namespace, transform):
    """Shuffled training batches of ``--train``, its class names and its number of classes."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from dinolab.pretrain.data import DatasetError, FashionMNIST, ImageFolder, collate_samples
    from dinolab.features.eval.sources import FASHION_MNIST

    try:
        if args.train == FASHION_MNIST:
            dataset = FashionMNIST(args.train_split, limit=args.train_limit, transform=transform)
            classes = list(dataset.classes)
            num_classes = len(classes)
        else:
            folder = ImageFolder(args.train, class_subfolders=Path(args.train).is_dir(), transform=transform)
            if any(label < 0 for label in folder.labels):
                raise DatasetError(f"{args.train}: every image needs a class (subfolder or 'path<TAB>label')")
            classes = list(folder.classes)
            num_classes = len(classes) or max(folder.labels) + 1  # integer labels of a file list
            count = len(folder) if args.train_limit is None else min(args.train_limit, len(folder))
            dataset = Subset(folder, range(count))
    except DatasetError as error:
        raise UserError(str(error)) from error
    loader = DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers,
        collate_fn=collate_samples, drop_last=len(dataset) > args.batch_size,
        generator=torch.Generator().manual_seed(args.seed),
    )  # fmt: skip
    return loader, classes, num_classes


def run(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from dinolab.pretrain.checkpoints import save_backbone
    from dinolab.features.cli.frozen_features import check_positive, load_model, make_transform, open_labelled, resolve_device
    from dinolab.features.eval.finetune import FinetuneConfig, LinearClassifier, evaluate_classifier, finetune

    if args.epochs < 1 or args.lr <= 0 or args.batch_size < 1:
        raise UserError("--epochs, --lr and --batch-size must be positive")
    if not 0 < args.min_scale <= 1:
        raise UserError(f"--min-scale must lie in (0, 1], got {args.min_scale}")
    check_positive(args, "size", "resize_size", "train_limit", "val_limit")
    if (args.out / "backbone.safetensors").exists() and not args.overwrite:
        raise UserError(f"{args.out} already holds a fine-tuned model; pass --overwrite to replace it")
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    model = load_model(args.weights, device)
    eval_tf, preprocessing = make_transform(model, args.size, args.resize_size)
    loader, classes, num_classes = training_batches(args, train_transform(model.preprocessing, preprocessing["input_size"], args.min_scale))
    val_source = open_labelled(args.val, args.val_split, eval_tf, args, args.val_limit)
    if classes and val_source.classes and set(val_source.classes) - set(classes):
        raise UserError(f"--val has classes missing from --train: {sorted(set(val_source.classes) - set(classes))[:5]}")
    classifier = LinearClassifier(model, num_classes, patch_mean=args.patch_mean).to(device)
    config = FinetuneConfig(
        epochs=args.epochs, lr=args.lr, warmup_epochs=args.warmup_epochs, weight_decay=args.weight_decay,
        layer_decay=args.layer_decay, drop_path=args.drop_path, label_smoothing=args.label_smoothing,
    )  # fmt: skip
    try:
        losses = finetune(classifier, loader, config, device)
    except FloatingPointError as error:
        raise UserError(str(error)) from error
    try:
        accuracy = evaluate_classifier(classifier, val_source.batches, device)
    except ValueError as error:  # no readable evaluation image
        raise UserError(f"--val {args.val}: {error}") from error
    args.out.mkdir(parents=True, exist_ok=True)
    save_backbone(classifier.backbone, args.out / "backbone.safetensors", fmt="safetensors", overwrite=True)
    head_state = {k: v.detach().cpu().contiguous() for k, v in classifier.head.state_dict().items()}
    save_file(head_state, str(args.out / "head.safetensors"),
              metadata={"classes": json.dumps(classes), "patch_mean": json.dumps(args.patch_mean)})
    result = {
        "weights": args.weights, "train": args.train, "val": args.val, "config": config.__dict__,
        "first_loss": losses[0], "last_loss": losses[-1], "val_top1": accuracy["top1"],
        "val_top5": accuracy["top5"], "preprocessing": preprocessing, "classes": classes,
    }  # fmt: skip
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"training loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps")
    print(f"val top-1 {accuracy['top1']:.2f}  top-5 {accuracy['top5']:.2f}; saved to {args.out}")
    return 0
