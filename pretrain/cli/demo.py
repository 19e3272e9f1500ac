"""``pretrain demo``: pretrain a small ViT on Fashion-MNIST on CPU and compare its k-NN with raw pixels."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dinolab.pretrain.cli import UserError

EPILOG = """\
examples:
  pretrain demo                               # ~13 minutes on 2 CPU cores, DINOv2 recipe
  pretrain demo --minutes 3 --out /tmp/quick  # a quick look
  pretrain demo --recipe dino                 # the DINO (v1) recipe instead
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="pretrain on Fashion-MNIST (CPU, ~13 min) and report k-NN accuracy vs raw pixels",
        description="Self-supervised pretraining of the fmnist-tiny preset on the Fashion-MNIST train split "
                    "(labels unused), then weighted k-NN (k=10, 20, T=0.07) on the test split next to the "
                    "same k-NN on raw pixels. Writes the checkpoint, teacher_backbone.pth, summary.json and "
                    "embeddings.png (PCA of test features coloured by class) to --out.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    parser.add_argument("--minutes", type=float, default=11.0,
                        help="training time budget in minutes (default 11; up to 10%% more when steps run slower "
                        "than probed, plus ~1 min of evaluation)")
    parser.add_argument("--epochs", type=float, help="train this many epochs instead of a time budget")
    parser.add_argument("--recipe", choices=("dino", "dinov2"), default="dinov2", help="default dinov2")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 is "
                        "faster when other programs keep the cores busy)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted demo in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (see pretrain)")
    parser.set_defaults(func=run)


def demo_config(args: argparse.Namespace):
    from dinolab.pretrain.train.config import ConfigError, build_config

    overrides = []
    if args.epochs is not None:
        overrides += [f"optim.epochs={args.epochs}", "run.minutes=null"]
    else:
        if args.minutes <= 0:
            raise UserError("--minutes must be positive")
        overrides.append(f"run.minutes={args.minutes}")
    if args.threads is not None:
        overrides.append(f"run.threads={args.threads}")
    preset = "fmnist-tiny" if args.recipe == "dinov2" else "fmnist-tiny-dino"
    try:
        return build_config(preset, overrides + list(args.overrides))
    except ConfigError as error:
        raise UserError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    import torch

    from dinolab.pretrain.data.errors import DatasetError
    from dinolab.pretrain.data.eval_splits import fashion_mnist_eval
    from dinolab.pretrain.train.checkpoint import TrainingCheckpointError
    from dinolab.pretrain.train.embeddings_plot import plot_embeddings
    from dinolab.pretrain.train.export import export_teacher
    from dinolab.pretrain.train.knn_eval import backbone_features, raw_pixel_knn
    from dinolab.pretrain.train.loop import Trainer, TrainingDiverged

    started = time.monotonic()
    config = demo_config(args)
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    out = Path(args.out)
    try:
        eval_data = fashion_mnist_eval(config)
    except DatasetError as error:
        raise UserError(f"{error} (the demo needs Fashion-MNIST; set DINOLAB_FASHION_MNIST_DIR)") from None

    baseline = raw_pixel_knn(*eval_data.final)
    print("raw-pixel k-NN on the test split: " + _format(baseline))
    try:
        trainer = Trainer(config, "fashion-mnist", out, resume=args.resume, eval_data=eval_data,
                          progress=not args.no_progress)
    except TrainingCheckpointError as error:
        raise UserError(str(error)) from None
    print(f"demo: {config.recipe} recipe, {trainer.data.description}, batch {config.optim.batch_size}, "
          f"{trainer.total_steps} steps ({trainer.total_steps / trainer.steps_per_epoch:.2f} epochs)")
    try:
        result = trainer.run()
    except TrainingDiverged as error:
        print(f"pretrain demo: stopped: {error}")
        return 3
    teacher = trainer.model.teacher["backbone"]
    export_teacher(teacher, out)
    test_split = eval_data.final[1]
    picture = plot_embeddings(backbone_features(teacher, test_split.images[:3000], config.run.knn_feature),
                              test_split.images[:3000], test_split.labels[:3000], out / "embeddings.png")
    total_minutes = (time.monotonic() - started) / 60
    summary = {
        "recipe": config.recipe,
        "knn_feature": config.run.knn_feature,
        "knn_pretrained": {str(k): v for k, v in (result.final_knn or {}).items()},
        "knn_raw_pixels": {str(k): v for k, v in baseline.items()},
        "steps": result.steps,
        "epochs": result.steps / trainer.steps_per_epoch,
        "images_per_second": result.images_per_second,
        "train_minutes": result.train_minutes,
        "total_minutes": total_minutes,
        "knn_history": result.knn_history,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print()
    print(f"Fashion-MNIST test k-NN (T=0.07), {result.steps} steps = {summary['epochs']:.2f} epochs, "
          f"{result.images_per_second:.0f} images/s, {total_minutes:.1f} min in all")
    print(f"  pretrained {config.recipe} ViT ({config.run.knn_feature}): {_format(result.final_knn or {})}")
    print(f"  raw pixels:                       {_format(baseline)}")
    print(f"wrote {out / 'checkpoint.pth'}, {out / 'teacher_backbone.pth'}, {picture}, {out / 'summary.json'}")
    return 0


def _format(accuracy: dict) -> str:
    return ", ".join(f"k={k} top-1 {v['top1']:.2f}%" for k, v in accuracy.items())
