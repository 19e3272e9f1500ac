"""``pretrain distill``: distil a frozen teacher into a smaller student (DINOv2 Sec. 5)."""

from __future__ import annotations

import argparse

from dinolab.pretrain.cli import UserError

EPILOG = """\
modes: heads     the teacher is a dinolab pretraining checkpoint (with DINO/iBOT heads): the student
                 learns the teacher's prototype distributions with the DINO (+iBOT +KoLeo) losses
       features  any backbone (released file, HF folder, checkpoint): cosine loss on CLS and patch tokens
the student configuration is --preset plus KEY=VALUE overrides (as for `pretrain train`); the
EMA of the student is exported to --out/student_backbone.pth and .safetensors. The full state is
checkpointed to --out/distill_checkpoint.pth (run.checkpoint_every_steps/minutes); --resume continues
it exactly. With --data fashion-mnist the EMA student's k-NN accuracy is measured at the end
(run.knn_feature, run.final_eval_train_limit) and written to --out/summary.json.
examples:
  pretrain distill --teacher runs/big --student vit_tiny --data fashion-mnist --out runs/distilled
  pretrain distill --teacher runs/big --student vit_tiny --data fashion-mnist --out runs/distilled \\
      --minutes 5 model.embed_dim=64 model.num_heads=1
  pretrain distill --teacher runs/big --student vit_tiny --data fashion-mnist --out runs/distilled --resume
  pretrain distill --teacher dinov2_vits14.pth --mode features --student vit_pico --data photos/ \\
      --out runs/pico --preset dinov2-vits14 optim.batch_size=32 optim.epochs=10
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distill", help="distil a frozen teacher into a smaller student (DINOv2 Sec. 5)",
        description="Train a small student on the outputs of a frozen teacher; the student's EMA is "
                    "the final model. Writes distill_checkpoint.pth, log.jsonl, summary.json and "
                    "student_backbone.* to --out.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--teacher", required=True, metavar="CKPT_OR_NAME",
                        help="pretraining checkpoint or run folder (heads mode); for features mode also a "
                             "backbone file, Hugging Face folder or released architecture name")
    parser.add_argument("--student", required=True, metavar="ARCH",
                        help="student architecture (e.g. vit_small, vit_tiny, vit_pico)")
    parser.add_argument("--mode", choices=("heads", "features"), default="heads",
                        help="distil the teacher's head outputs (default) or its features")
    parser.add_argument("--data", required=True,
                        help="'fashion-mnist', a folder of images (searched recursively) or a text file list")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--preset", default="fmnist-tiny", help="student configuration preset (default fmnist-tiny)")
    parser.add_argument("--epochs", type=float, help="shortcut for optim.epochs=...")
    parser.add_argument("--minutes", type=float, help="wall-clock budget for training; schedules are fitted to it")
    parser.add_argument("--resume", action="store_true",
                        help="continue from --out/distill_checkpoint.pth (same teacher, mode and configuration)")
    parser.add_argument("--no-eval", action="store_true", help="skip the final k-NN evaluation")
    parser.add_argument("--limit", type=int, help="use only the first N Fashion-MNIST training images")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="student config overrides")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dinolab.pretrain.checkpoints import CheckpointError
    from dinolab.pretrain.data.errors import DatasetError
    from dinolab.pretrain.train.checkpoint import TrainingCheckpointError
    from dinolab.pretrain.train.config import ConfigError, build_config
    from dinolab.pretrain.train.distill import Distiller
    from dinolab.pretrain.train.loop import TrainingDiverged

    from dinolab.pretrain.models.presets import config_for

    try:
        config_for(args.student)
    except ValueError as error:
        raise UserError(f"--student: {error}") from None
    if any(item.startswith("model.arch=") for item in args.overrides):
        raise UserError("give the student architecture with --student, not model.arch=...")
    overrides = [f"model.arch={args.student}"]
    if args.epochs is not None:
        overrides.append(f"optim.epochs={args.epochs}")
    if args.minutes is not None:
        overrides.append(f"run.minutes={args.minutes}")
    try:
        config = build_config(args.preset, overrides + list(args.overrides))
    except ConfigError as error:
        raise UserError(str(error)) from None
    if args.limit is not None and (args.limit < 1 or args.data != "fashion-mnist"):
        raise UserError("--limit needs a positive count and --data fashion-mnist")
    if config.run.threads:
        import torch

        torch.set_num_threads(config.run.threads)
    try:
        distiller = Distiller(config, args.teacher, args.mode, args.data, args.out, resume=args.resume,
                              evaluate=not args.no_eval, data_limit=args.limit, progress=not args.no_progress)
        print(f"distill ({args.mode}): teacher {args.teacher} -> student {args.student}, "
              f"{distiller.data.description}, {distiller.total_steps} steps"
              + (f" (resuming at step {distiller.step})" if distiller.step else ""))
        result = distiller.run()
    except (ConfigError, DatasetError, TrainingCheckpointError, CheckpointError, FileNotFoundError,
            KeyError) as error:
        raise UserError(str(error)) from None
    except TrainingDiverged as error:
        print(f"pretrain distill: stopped: {error}")
        return 3
    if result.losses:
        print(f"trained {result.steps} steps in {result.train_minutes:.1f} min; "
              f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}")
    if result.final_knn:
        print("k-NN of the EMA student on the test split: " + ", ".join(
            f"k={k} top-1 {v['top1']:.2f}%" for k, v in result.final_knn.items()))
    for path in result.exported:
        print(f"wrote {path}")
    return 0
