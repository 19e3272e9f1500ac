"""``features knn``: weighted k-NN accuracy of frozen CLS features (DINO protocol, T = 0.07)."""

from __future__ import annotations

import argparse
import json

from dinolab.features.cli import UserError
from dinolab.features.cli.frozen_features import add_cache_arguments, add_labelled_data_arguments, add_model_arguments

EXAMPLES = """examples:
  features knn --weights runs/fmnist/checkpoint.pth --train fashion-mnist --val fashion-mnist --size 28
  features knn --weights dinov2_vits14.pth --train photos/train --val photos/val -k 10 20 --json knn.json
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "knn",
        help="weighted k-NN classification on frozen features",
        description="Weighted k-NN (cosine similarity, votes exp(s/T)) of the model's CLS features: each "
        "--val image is classified by its k nearest --train images. Features are cached on disk.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser, required=False)
    add_labelled_data_arguments(parser, feature_files=True)
    add_cache_arguments(parser)
    group = parser.add_argument_group("k-NN")
    group.add_argument("-k", "--k", dest="ks", type=int, nargs="+", default=[10, 20, 100, 200],
                       help="neighbour counts (default 10 20 100 200)")
    group.add_argument("--temperature", type=float, default=0.07, help="vote temperature T (default 0.07)")
    group.add_argument("--retrieval", action="store_true",
                       help="also report recall@1/5/10 and mAP of --val queries against the --train gallery "
                            "(relevant = same class)")
    group.add_argument("--json", dest="json_out", metavar="FILE", help="also write the results as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dinolab.features.cli.frozen_features import labelled_train_val
    from dinolab.pretrain.train.knn import knn_accuracy

    if any(k < 1 for k in args.ks):
        raise UserError(f"-k values must be positive, got {args.ks}")
    if args.temperature <= 0:
        raise UserError(f"--temperature must be positive, got {args.temperature}")
    train, val, _ = labelled_train_val(args)
    results = knn_accuracy(
        train.cls.to(args.device), train.labels, val.cls.to(args.device), val.labels, args.ks, args.temperature
    )
    print(f"weighted k-NN (T={args.temperature}) on {len(train)} train / {len(val)} val images")
    print(f"{'k':>6}{'top-1':>9}{'top-5':>9}")
    for k, acc in results.items():
        print(f"{k:>6}{acc['top1']:>9.2f}{acc['top5']:>9.2f}")
    retrieval = None
    if args.retrieval:
        from dinolab.features.eval.retrieval_metrics import retrieval_metrics_from_features

        retrieval = retrieval_metrics_from_features(
            val.cls.to(args.device), val.labels.to(args.device), train.cls.to(args.device),
            train.labels.to(args.device), ks=(1, 5, 10),
        )  # fmt: skip
        print("retrieval (val queries, train gallery): " + "  ".join(
            f"{name} {retrieval[name]:.2f}" for name in ("recall@1", "recall@5", "recall@10", "mAP")))
    if args.json_out:
        payload = {
            "weights": args.weights, "train": args.train, "val": args.val, "temperature": args.temperature,
            "num_train": len(train), "num_val": len(val),
            "results": {str(k): acc for k, acc in results.items()}, "retrieval": retrieval,
        }  # fmt: skip
        with open(args.json_out, "w") as handle:
            json.dump(payload, handle, indent=2)
    return 0
