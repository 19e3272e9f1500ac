"""Distillation vs pretraining from scratch at the same wall-clock budget, next to the teacher.

Three numbers from one k-NN protocol (weighted k-NN, k = 10, 20, T = 0.07, CLS + mean patch token,
the first 20,000 Fashion-MNIST training images as memory bank, the full test split as queries):

* the frozen teacher (a dinolab pretraining checkpoint, e.g. from ``pretrain demo`` or
  ``pretrain train --data fashion-mnist``);
* a smaller student distilled from it in ``heads`` mode (DINOv2 Sec. 5) for ``--minutes``;
* the same student pretrained from scratch (DINOv2 recipe, same heads, crops and optimiser) for the
  same ``--minutes``.

The two students train CONCURRENTLY in two processes with one thread each, so they share the machine
alike; the teacher is evaluated afterwards. Prints a table and writes ``results.json`` to ``--out``.

    python -m benchmarks.distill_report /tmp/distill_teacher/checkpoint.pth --minutes 5 --out runs/distill_report
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

# The student: a 64-wide, 1-head, 4-block ViT with patch 7 on 28-px global / 14-px local crops.
STUDENT = ["model.arch=vit_tiny", "model.patch_size=7", "model.img_size=28", "model.embed_dim=64",
           "model.depth=4", "model.num_heads=1", "crops.global_size=28", "crops.local_size=14",
           "crops.num_local=2", "crops.storage_size=28", "optim.epochs=100", "run.threads=1",
           "run.eval_every_steps=0", "run.knn_feature=cls+avgpool", "run.final_eval_train_limit=20000",
           "run.final_eval_test_limit=null"]
ARMS = ("distilled", "scratch")


def teacher_heads(teacher: str) -> list[str]:
    """The teacher's head section as overrides, so the scratch student has the same K prototypes."""
    from dinolab.pretrain.train.checkpoint import load_checkpoint

    head = load_checkpoint(teacher)["dinolab"]["config"]["head"]
    return [f"head.{key}={'null' if value is None else value}" for key, value in head.items()]


def student_config(teacher: str, minutes: float, extra: list[str]):
    from dinolab.pretrain.train.config import build_config

    return build_config("fmnist-tiny", [*STUDENT, *teacher_heads(teacher), f"run.minutes={minutes}", *extra])


def run_arm(arm: str, teacher: str, minutes: float, out: Path, extra: list[str]) -> None:
    """One student, trained in this process on one thread; its numbers go to ``<out>/arm.json``."""
    from dinolab.pretrain.train.distill import Distiller
    from dinolab.pretrain.train.loop import Trainer

    torch.set_num_threads(1)
    config = student_config(teacher, minutes, extra)
    started = time.monotonic()
    if arm == "distilled":
        result = Distiller(config, teacher, "heads", "fashion-mnist", out, progress=False).run()
    else:
        result = Trainer(config, "fashion-mnist", out, progress=False).run()
    record = {"arm": arm, "steps": result.steps, "total_steps": result.total_steps,
              "train_minutes": result.train_minutes, "wall_minutes": (time.monotonic() - started) / 60,
              "knn": {str(k): v["top1"] for k, v in (result.final_knn or {}).items()}}
    (out / "arm.json").write_text(json.dumps(record, indent=2) + "\n")


def teacher_row(teacher: str, minutes: float, extra: list[str]) -> dict:
    """The teacher's k-NN with the students' evaluation code, data and feature; its training time."""
    from dinolab.pretrain.train.checkpoint import load_checkpoint
    from dinolab.pretrain.train.distill import load_teacher_backbone
    from dinolab.pretrain.train.knn_eval import knn_evaluate, raw_pixel_knn
    from dinolab.pretrain.data.eval_splits import fashion_mnist_eval

    torch.set_num_threads(1)
    config = student_config(teacher, minutes, extra)
    splits = fashion_mnist_eval(config).final
    started = time.monotonic()
    accuracy = knn_evaluate(load_teacher_backbone(teacher), *splits, feature=config.run.knn_feature)
    eval_minutes = (time.monotonic() - started) / 60
    state = load_checkpoint(teacher)
    summary = Path(teacher).with_name("summary.json")
    timing = json.loads(summary.read_text()) if summary.is_file() else {}  # written by `pretrain demo`
    pixels = raw_pixel_knn(*splits)
    row = {"arm": "teacher", "steps": int(state["step"]), "train_minutes": timing.get("train_minutes"),
           "eval_minutes": eval_minutes, "embed_dim": state["dinolab"]["arch"]["embed_dim"],
           "knn": {str(k): v["top1"] for k, v in accuracy.items()},
           "raw_pixels": {str(k): v["top1"] for k, v in pixels.items()},
           "memory_bank": int(splits[0].labels.shape[0]), "queries": int(splits[1].labels.shape[0])}
    if "total_minutes" in timing:
        row["wall_minutes"] = timing["total_minutes"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher", help="dinolab pretraining checkpoint (file or run folder) of the teacher")
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget of each student")
    parser.add_argument("--out", default="runs/distill_report")
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # internal: one student process
    parser.add_argument("overrides", nargs="*", help="student config overrides (both students)")
    args = parser.parse_intermixed_args()
    out = Path(args.out)
    if Path(args.teacher).is_dir():
        args.teacher = str(Path(args.teacher) / "checkpoint.pth")
    if args.arm:
        run_arm(args.arm, args.teacher, args.minutes, out / args.arm, args.overrides)
        return
    if any((out / arm).exists() for arm in ARMS):
        sys.exit(f"{out}: holds an earlier report; choose another --out")
    command = [sys.executable, "-m", __spec__.name, args.teacher, "--minutes", str(args.minutes), "--out", str(out)]
    processes = {arm: subprocess.Popen([*command, "--arm", arm, *args.overrides]) for arm in ARMS}
    for arm, process in processes.items():
        if process.wait() != 0:
            sys.exit(f"the {arm} student failed (exit {process.returncode})")
    rows = [teacher_row(args.teacher, args.minutes, args.overrides)]
    rows += [json.loads((out / arm / "arm.json").read_text()) for arm in ARMS]
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")

    teacher = rows[0]
    print(f"\nFashion-MNIST test k-NN top-1 (memory bank: first {teacher['memory_bank']} train images, "
          f"{teacher['queries']} test queries, CLS + mean patch token); students: {args.minutes} min budget "
          "each, run concurrently on 1 thread each; the teacher's times are those of its own training run")
    print(f"{'model':<34}{'steps':>7}{'train min':>10}{'wall min':>9}{'k=10':>8}{'k=20':>8}")
    names = {"teacher": f"teacher (embed {teacher['embed_dim']})", "distilled": "student 64-d, distilled (heads)",
             "scratch": "student 64-d, from scratch"}
    for row in rows:
        train = f"{row['train_minutes']:.2f}" if row.get("train_minutes") is not None else "n/a"
        wall = f"{row['wall_minutes']:.2f}" if row.get("wall_minutes") is not None else "n/a"
        print(f"{names[row['arm']]:<34}{row['steps']:>7}{train:>10}{wall:>9}"
              f"{row['knn']['10']:>8.2f}{row['knn']['20']:>8.2f}")
    raw = teacher["raw_pixels"]
    print(f"{'raw pixels (no training)':<34}{'':>26}{raw['10']:>8.2f}{raw['20']:>8.2f}")


if __name__ == "__main__":
    main()
