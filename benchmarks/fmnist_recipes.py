"""DINO vs DINOv2 recipe on Fashion-MNIST at the same wall-clock budget, next to raw-pixel k-NN.

Each recipe pretrains the ``fmnist-tiny`` preset (``fmnist-tiny-dino`` for DINO) for ``--minutes`` of
training, then runs the same weighted k-NN (k = 10, 20, T = 0.07) on the test split with the same
memory bank as the raw-pixel baseline. Prints a table and writes ``results.json`` to ``--out``.

    python -m benchmarks.fmnist_recipes --minutes 3 --threads 1 --out outputs/bench_recipes
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dinolab.pretrain.train.config import build_config
from dinolab.pretrain.train.knn_eval import raw_pixel_knn
from dinolab.pretrain.data.eval_splits import fashion_mnist_eval
from dinolab.pretrain.train.loop import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget per recipe")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a busy machine)")
    parser.add_argument("--out", default="outputs/bench_recipes")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to both recipes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for preset in ("fmnist-tiny-dino", "fmnist-tiny"):
        config = build_config(preset, [f"run.minutes={args.minutes}", *args.overrides])
        eval_data = fashion_mnist_eval(config)
        started = time.monotonic()
        trainer = Trainer(config, "fashion-mnist", Path(args.out) / config.recipe, eval_data=eval_data,
                          progress=False)
        result = trainer.run()
        rows.append({
            "recipe": config.recipe, "steps": result.steps, "epochs": result.steps / trainer.steps_per_epoch,
            "images_per_second": result.images_per_second, "train_minutes": result.train_minutes,
            "total_minutes": (time.monotonic() - started) / 60,
            "knn": {str(k): v["top1"] for k, v in (result.final_knn or {}).items()},
        })
    baseline = raw_pixel_knn(*eval_data.final)
    rows.append({"recipe": "raw pixels", "knn": {str(k): v["top1"] for k, v in baseline.items()}})
    memory_bank = eval_data.final[0].labels.shape[0]

    print(f"\nFashion-MNIST test k-NN top-1 (memory bank: {memory_bank} train images), "
          f"{args.minutes} training minutes per recipe")
    print(f"{'recipe':<12}{'steps':>7}{'epochs':>8}{'img/s':>8}{'k=10':>8}{'k=20':>8}")
    for row in rows:
        steps = f"{row['steps']:>7}{row['epochs']:>8.2f}{row['images_per_second']:>8.0f}" if "steps" in row else " " * 23
        print(f"{row['recipe']:<12}{steps}{row['knn']['10']:>8.2f}{row['knn']['20']:>8.2f}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
