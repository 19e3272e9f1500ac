"""Training throughput of the ``fmnist-tiny`` preset by batch size, as a ratio to the preset's batch of 64.

What a longer curation-payoff run costs: the same number of steps at a larger batch sees more images, and
at this model size a step is dominated by fixed per-step cost. Each batch size trains ``--steps`` steps on
in-memory Fashion-MNIST without evaluation (no checkpoints), in one process, one after another.

    .venv/bin/python -m benchmarks.batch_throughput --batches 64 128 256 --steps 300
"""

from __future__ import annotations

import argparse
import tempfile
import time

from benchmarks._shared.equal_steps import FIXED_LENGTH, equal_step_overrides
from dinolab.pretrain.train.config import build_config
from dinolab.pretrain.train.loop import Trainer

TRAIN_IMAGES = 60000


def steps_per_second(batch: int, steps: int, out: str) -> float:
    """Steps per second of ``steps`` training steps at ``batch`` (the payoff runs' step-count overrides)."""
    overrides = equal_step_overrides(build_config("fmnist-tiny"), TRAIN_IMAGES, TRAIN_IMAGES, steps, batch)
    config = build_config("fmnist-tiny", [*FIXED_LENGTH, *overrides])
    started = time.perf_counter()
    result = Trainer(config, "fashion-mnist", out, evaluate=False, progress=False).run()
    return result.steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256], help="batch sizes; the first is the baseline")
    parser.add_argument("--steps", type=int, default=300, help="training steps per batch size")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        rates = {batch: steps_per_second(batch, args.steps, f"{work}/{batch}") for batch in args.batches}
    baseline = args.batches[0]
    for batch, rate in rates.items():
        print(f"batch {batch:4d}: {rate:6.2f} steps/s, {rate * batch:6.0f} images/s; time per step "
              f"{rates[baseline] / rate:.2f}x, images per second {rate * batch / (rates[baseline] * baseline):.2f}x batch {baseline}")


if __name__ == "__main__":
    main()
