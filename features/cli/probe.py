"""``features probe {depth,seg}``: linear probes on frozen patch tokens, trained and scored on image pairs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dinolab.features.cli import UserError
from dinolab.features.cli.visualize import add_backbone_arguments, backbone_caption, backbone_from_args, user_facing_errors

DATA_HELP = (
    "a bundled photo ({bundled}) or a folder ROOT with images/NAME.* and {folder}/NAME.png|npy; "
    "a single pair is split into left half (train) and right half (evaluation)"
)


def _add_common(parser: argparse.ArgumentParser, task: str, bundled: tuple[str, ...], folder: str) -> None:
    parser.add_argument(
        "--data", default=bundled[0], metavar="SOURCE",
        help=DATA_HELP.format(bundled=", ".join(bundled), folder=folder) + f" (default {bundled[0]})",
    )
    parser.add_argument("--steps", type=int, default=300, help="optimisation steps, one image each (default 300)")
    parser.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate (default 0.01)")
    parser.add_argument(
        "--val-fraction", type=float, default=0.25, help="share of folder pairs held out for evaluation (0.25)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (picture and metrics.json)")
    add_backbone_arguments(parser)
    parser.set_defaults(func=run, task=task)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe", help="dense linear probes on frozen features: depth, segmentation",
        description="Train a linear head on frozen patch tokens, then score it on held-out pixels.",
    )
    tasks = parser.add_subparsers(dest="probe", metavar="TASK", required=True)
    depth = tasks.add_parser(
        "depth", help="monocular depth: RMSE, AbsRel, δ1",
        description=(
            "Depth probe (DINOv2 §7.4): lin.1 = last block's patch tokens + CLS, lin.4 = four evenly spaced "
            "blocks; linear head upsampled ×4 bilinearly; depth as a distribution over 256 bins (or --head "
            "regression); scale-invariant log loss. Depth PNGs are 16-bit in units of 1/--depth-scale."
        ),
    )
    depth.add_argument("--features", choices=("lin.1", "lin.4"), default="lin.1")
    depth.add_argument("--head", choices=("classification", "regression"), default="classification")
    depth.add_argument(
        "--depth-scale", type=float, default=1000.0, help="16-bit PNG value per unit of depth (default 1000: mm→m)"
    )
    _add_common(depth, "depth", ("arc2017", "motorcycle"), "depth")

    seg = tasks.add_parser(
        "seg", help="semantic segmentation: mIoU",
        description=(
            "Linear segmentation probe (DINOv2 §7.4): 'linear' = last block's patch tokens; '+ms' = last four "
            "blocks and multi-scale + flip test-time augmentation. Masks hold class indices, 255 = ignore."
        ),
    )
    seg.add_argument("--features", choices=("linear", "+ms"), default="linear")
    _add_common(seg, "segmentation", ("voc",), "masks")


def _pairs(args: argparse.Namespace):
    from dinolab.features.probes.pairs import BUNDLED, bundled_pairs, folder_pairs, split_pairs

    if args.data in BUNDLED[args.task]:
        pairs = bundled_pairs(args.data)
    elif Path(args.data).is_dir():
        pairs = folder_pairs(args.data, args.task, getattr(args, "depth_scale", 1000.0))
    else:
        raise UserError(
            f"--data {args.data!r} is neither a folder nor a bundled source ({', '.join(BUNDLED[args.task])})"
        )
    return split_pairs(pairs, args.val_fraction)


def run(args: argparse.Namespace) -> int:
    from dinolab.features.probes.protocol import render_probe, run_depth_probe, run_segmentation_probe

    if args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    if args.task == "depth" and args.depth_scale <= 0:
        raise UserError(f"--depth-scale must be positive, got {args.depth_scale}")
    model = backbone_from_args(args)
    size = args.size or model.preprocessing.input_size
    with user_facing_errors():
        train, val = _pairs(args)
        print(f"training on {len(train)} image(s), evaluating on {len(val)}")
        try:
            if args.task == "depth":
                report = run_depth_probe(
                    model, train, val, args.features, args.head, args.steps, args.lr, size, progress=True
                )
            else:
                report = run_segmentation_probe(model, train, val, args.features, args.steps, args.lr, size, True)
        except ValueError as error:
            raise UserError(str(error)) from error
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "depth" if args.task == "depth" else "seg"
    variant = args.features + (f", {args.head} head" if args.task == "depth" else "")
    caption = f"{name} probe ({variant}) on held-out pixels — {backbone_caption(args)}"
    picture = render_probe(report, args.task, out / f"probe_{name}.png", caption)
    tail = max(1, len(report.losses) // 10)
    summary = {
        "task": args.task,
        "features": args.features,
        "data": args.data,
        "weights": args.weights or f"random {args.arch}",
        "train_images": len(train),
        "eval_images": len(val),
        "loss_first": report.losses[0],
        "loss_last_10pct_mean": sum(report.losses[-tail:]) / tail,
        "metrics": report.metrics,
        "constant_baseline": report.baseline,
    }
    if args.task == "depth":
        summary["head"] = args.head
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"train loss {summary['loss_first']:.4f} -> {summary['loss_last_10pct_mean']:.4f}")
    for key, value in report.metrics.items():
        if not key.startswith("iou_class_"):
            print(f"{key}: {value:.4f}   (constant prediction: {report.baseline[key]:.4f})")
    print(picture)
    return 0
