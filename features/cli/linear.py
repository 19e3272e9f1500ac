"""``features linear``: linear probe (grid of heads in one pass) or logistic regression on frozen features."""

from __future__ import annotations

import argparse
import json

from dinolab.features.cli import UserError
from dinolab.features.cli.frozen_features import add_cache_arguments, add_labelled_data_arguments, add_model_arguments

EXAMPLES = """examples:
  features linear --weights runs/fmnist/checkpoint.pth --train fashion-mnist --val fashion-mnist --size 28
  features linear --weights dinov2_vits14.pth --train photos/train --val photos/test --method logreg
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from dinolab.features.eval.linear import FEATURE_VARIANTS

    parser = subparsers.add_parser(
        "linear",
        help="linear probe / logistic regression on frozen features",
        description="DINOv2 linear evaluation. --method sgd trains one linear head per (feature variant, "
        "learning rate) in a single pass over cached features and keeps the head that is best on a "
        "validation split carved from --train; --method logreg fits L-BFGS logistic regression with a "
        "grid of C. Accuracy is reported on --val.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser, required=False)
    add_labelled_data_arguments(parser, feature_files=True)
    add_cache_arguments(parser)
    group = parser.add_argument_group("probe")
    group.add_argument("--method", choices=("sgd", "logreg"), default="sgd", help="(default sgd)")
    group.add_argument("--variants", nargs="+", choices=tuple(FEATURE_VARIANTS), default=list(FEATURE_VARIANTS),
                       help="features: CLS of the last 1 or 4 blocks, +avg adds the mean patch token "
                            "(default: all four for sgd; logreg uses the first given)")
    group.add_argument("--lrs", type=float, nargs="+",
                       help="sgd learning rates (default: 1e-5..1.0, 16 values, scaled by batch/256)")
    group.add_argument("--epochs", type=int, default=10, help="sgd passes over the features (default 10)")
    group.add_argument("--probe-batch-size", type=int, default=256, help="sgd batch size (default 256)")
    group.add_argument("--c-grid", type=float, nargs="+", help="logreg inverse regularisation values")
    group.add_argument("--val-fraction", type=float, default=0.1,
                       help="part of --train held out to choose the head / C (default 0.1)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--json", dest="json_out", metavar="FILE", help="also write the results as JSON")
    parser.set_defaults(func=run)


def available_variants(requested: list[str], features) -> list[str]:
    """The requested variants these features support (feature files hold one block, maybe no patch mean)."""
    import sys

    from dinolab.features.eval.linear import FEATURE_VARIANTS

    blocks = features.cls_layers.shape[1]
    has_mean = features.patch_mean is not None
    usable = [
        v for v in dict.fromkeys(requested)
        if FEATURE_VARIANTS[v][0] <= blocks and (has_mean or not FEATURE_VARIANTS[v][1])
    ]  # fmt: skip
    if not usable:
        raise UserError(
            f"none of the variants {requested} fits these features ({blocks} block(s) of CLS"
            f"{', with' if has_mean else ', no'} patch mean); try --variants cls1"
        )
    dropped = [v for v in requested if v not in usable]
    if dropped:
        print(f"variants {dropped} need more than these features hold; using {usable}", file=sys.stderr)
    return usable


def run(args: argparse.Namespace) -> int:
    from dinolab.features.cli.frozen_features import labelled_train_val
    from dinolab.features.eval.linear import linear_probe, variant_features
    from dinolab.features.eval.logistic import DEFAULT_C_GRID, logistic_probe

    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val-fraction must lie in (0, 1), got {args.val_fraction}")
    if args.epochs < 1 or args.probe_batch_size < 1:
        raise UserError("--epochs and --probe-batch-size must be positive")
    train, val, _ = labelled_train_val(args)
    variants = available_variants(args.variants, train)
    if args.method == "logreg":
        variant = variants[0]
        if args.c_grid and min(args.c_grid) <= 0:
            raise UserError(f"--c-grid values must be positive, got {args.c_grid}")
        try:
            result = logistic_probe(
                variant_features(train.cls_layers, train.patch_mean, variant), train.labels,
                variant_features(val.cls_layers, val.patch_mean, variant), val.labels,
                c_grid=args.c_grid or DEFAULT_C_GRID, val_fraction=args.val_fraction, seed=args.seed,
                device=args.device, progress=True,
            )  # fmt: skip
        except ValueError as error:
            raise UserError(str(error)) from error
        print(f"logistic regression on {variant}, C chosen on {args.val_fraction:.0%} of train")
        print(f"{'C':>10}{'val top-1':>11}")
        for c, acc in result.val_grid.items():
            print(f"{c:>10.3g}{acc:>11.2f}{'  <- best' if c == result.best_c else ''}")
        summary = f"best C={result.best_c:g}"
    else:
        try:
            result = linear_probe(
                {v: variant_features(train.cls_layers, train.patch_mean, v) for v in variants}, train.labels,
                {v: variant_features(val.cls_layers, val.patch_mean, v) for v in variants}, val.labels,
                learning_rates=args.lrs, epochs=args.epochs, batch_size=args.probe_batch_size,
                val_fraction=args.val_fraction, seed=args.seed, device=args.device, progress=True,
            )  # fmt: skip
        except ValueError as error:
            raise UserError(str(error)) from error
        lrs = list(next(iter(result.val_grid.values())))
        print(f"linear heads, validation top-1 on {args.val_fraction:.0%} of train ({args.epochs} epochs)")
        print(f"{'lr':>10}" + "".join(f"{v:>10}" for v in variants))
        for lr in lrs:
            print(f"{lr:>10.2g}" + "".join(f"{result.val_grid[v][lr]:>10.2f}" for v in variants))
        summary = f"best head: {result.best_variant}, lr={result.best_lr:g}"
    print(f"{summary}; val top-1 {result.val_top1:.2f}")
    print(f"test on {len(val)} images: top-1 {result.test_top1:.2f}  top-5 {result.test_top5:.2f}")
    if args.json_out:
        payload = {"weights": args.weights, "method": args.method, "num_train": len(train),
                   "num_val": len(val), **result.to_dict()}  # fmt: skip
        with open(args.json_out, "w") as handle:
            json.dump(payload, handle, indent=2)
    return 0
