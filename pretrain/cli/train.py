"""``pretrain train``: DINO / DINOv2 self-supervised pretraining from a preset plus overrides."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dinolab.pretrain.cli import UserError

EPILOG = """\
presets: fmnist-tiny (DINOv2 recipe, Fashion-MNIST on CPU), fmnist-tiny-dino (DINO recipe),
         dino-vits16, dinov2-vits14, dinov2-vitl14
overrides: section.key=value, sections recipe | model | crops | head | loss | optim | run, e.g.
         pretrain train --data fashion-mnist --out runs/fm optim.epochs=2 loss.teacher_temp=0.05
examples:
  pretrain train --data fashion-mnist --out runs/fmnist --minutes 10
  pretrain train --data photos/ --preset dinov2-vits14 --out runs/photos optim.batch_size=32
  pretrain train --data runs/lake/shards --out runs/curated run.num_workers=2   # curate run's shards
  pretrain train --data s3://bucket/lake/shards --storage-option endpoint_url=http://127.0.0.1:9000 \
      --out runs/curated                        # shards in an object store (credentials: the environment)
  pretrain train --data fashion-mnist --out runs/fmnist --resume     # continue after a stop
  torchrun --standalone --nproc-per-node 4 -m dinolab.pretrain pretrain --data photos/ --out runs/photos \
      --preset dinov2-vits14 run.parallel=fsdp     # data parallel; see docs/scale.md
  pretrain train --data photos/ --preset dinov2-vits14 --out runs/hr --init-from runs/photos \
      --high-res --epochs 1                       # short final phase at 518 px (DINOv2 Sec. 5)
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="self-supervised pretraining (DINO or DINOv2 recipe)",
        description="Pretrain a ViT with the DINO or DINOv2 recipe. Writes checkpoint.pth (resumable), "
                    "log.jsonl, tensorboard/ and, at the end, teacher_backbone.pth to --out.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True,
                        help="'fashion-mnist', a folder of images (searched recursively), a text file list, or "
                             "webdataset shards: curate run's OUT/shards folder, its index.json, or a brace "
                             "pattern such as 'shards/shard-{000000..000041}.tar'; each may be an fsspec URL "
                             "(s3://bucket/run/shards)")
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec option of --data URLs (endpoint_url=..., anon=true, "
                             "client_kwargs.region_name=...), laid over the JSON object in "
                             "$PRETRAIN_STORAGE_OPTIONS; credentials best from the environment; repeatable")
    parser.add_argument("--out", required=True, help="output folder (checkpoint, logs, exported backbone)")
    parser.add_argument("--preset", default="fmnist-tiny", help="starting configuration (default fmnist-tiny)")
    parser.add_argument("--recipe", choices=("dino", "dinov2"), help="shortcut for recipe=... (dino also sets "
                        "softmax centring)")
    parser.add_argument("--epochs", type=float, help="shortcut for optim.epochs=...")
    parser.add_argument("--minutes", type=float, help="wall-clock budget for training; schedules are fitted to it")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newer of --out/checkpoint.pth and --out/checkpoint.dcp/ (written "
                             "under torchrun) if one exists; the number of processes may change")
    parser.add_argument("--limit", type=int, help="use only the first N Fashion-MNIST training images")
    parser.add_argument("--init-from", metavar="CKPT",
                        help="start a new phase from this pretraining checkpoint (file or run folder): "
                             "student, teacher and heads are loaded, optimiser and schedules start afresh; "
                             "a backbone file or HF folder (no heads) sets both backbones, heads start new")
    parser.add_argument("--high-res", action="store_true",
                        help="high-resolution phase (needs --init-from): global crops at 518 px for patch 14, "
                             "512 for 16, else twice the preset's size; local crops scaled alike")
    parser.add_argument("--high-res-size", type=int, metavar="SIZE",
                        help="with --high-res: this global crop size instead")
    parser.add_argument("--no-eval", action="store_true", help="skip k-NN evaluation on Fashion-MNIST test")
    parser.add_argument("--export-hf", action="store_true", help="also export the teacher in Hugging Face layout")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar, a line per twentieth of the run instead (also when stderr is not a terminal)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.set_defaults(func=run)


def shortcut_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--recipe/--epochs/--minutes`` shortcuts as overrides (explicit KEY=VALUE ones win)."""
    extra = []
    if args.recipe:
        extra += [f"recipe={args.recipe}", "loss.centering=" + ("softmax" if args.recipe == "dino" else "sinkhorn")]
    if args.epochs is not None:
        extra.append(f"optim.epochs={args.epochs}")
    if args.minutes is not None:
        extra.append(f"run.minutes={args.minutes}")
    return extra + list(args.overrides)


def run(args: argparse.Namespace) -> int:
    import os

    from dinolab.core.storage import parse_storage_options
    from dinolab.pretrain import distributed
    from dinolab.pretrain.data.errors import DatasetError
    from dinolab.pretrain.train.checkpoint import TrainingCheckpointError
    from dinolab.pretrain.train.config import ConfigError, build_config
    from dinolab.pretrain.train.loop import Trainer, TrainingDiverged

    try:
        config = build_config(args.preset, shortcut_overrides(args))
        storage_options = parse_storage_options(args.storage_option, os.environ)
    except (ConfigError, ValueError) as error:
        raise UserError(str(error)) from None
    if args.high_res_size is not None and (not args.high_res or args.high_res_size < 1):
        raise UserError("--high-res-size needs --high-res and a positive size")
    if args.high_res:
        from dinolab.pretrain.train.phases import high_res_config

        if not args.init_from:
            raise UserError("--high-res is a final phase of an earlier run: give its checkpoint with --init-from")
        try:
            config = high_res_config(config, args.high_res_size)
        except ConfigError as error:
            raise UserError(f"--high-res: {error}") from None
    if args.init_from and not Path(args.init_from).exists():
        raise UserError(f"--init-from {args.init_from}: no such checkpoint file or run folder")
    if config.run.threads:
        import torch

        torch.set_num_threads(config.run.threads)
    if args.limit is not None and (args.limit < 1 or args.data != "fashion-mnist"):
        raise UserError("--limit needs a positive count and --data fashion-mnist")
    try:
        trainer = Trainer(config, args.data, args.out, resume=args.resume, data_limit=args.limit,
                          progress=not args.no_progress and sys.stderr.isatty(), evaluate=not args.no_eval,
                          init_from=args.init_from, storage_options=storage_options)
        say = print if distributed.is_main_process() else (lambda *_: None)
        say(f"pretrain: {config.recipe} recipe, {trainer.data.description}, "
            f"{trainer.steps_per_epoch} steps/epoch, {trainer.total_steps} steps in all"
            + (f" (resuming at step {trainer.step})" if trainer.step else "")
            + (f", global crops {config.crops.global_size} px from {args.init_from}" if args.init_from else ""))
        result = trainer.run()
    except (ConfigError, DatasetError, TrainingCheckpointError, FileNotFoundError) as error:
        raise UserError(str(error)) from None
    except TrainingDiverged as error:
        print(f"pretrain train: stopped: {error}")
        return 3
    if result.skipped_images:
        say(f"skipped {result.skipped_images} unreadable image(s): "
            + "; ".join(trainer.data.skipped.examples))
    say(f"trained {result.steps} steps in {result.train_minutes:.1f} min "
        f"({result.images_per_second:.0f} images/s)")
    if result.final_knn:
        say("k-NN on the test split: " + ", ".join(
            f"k={k} top-1 {v['top1']:.2f}%" for k, v in result.final_knn.items()))
    for path in trainer.export_teacher(hf=args.export_hf):
        say(f"wrote {path}")
    return 0
