"""The pretraining stage of ``curate run --pretrain PRESET``: the trainer on the run's new shards.

It starts after the report stage, once the Dask cluster is closed, as its own process —
``python -m pretrain train --data OUT/shards --out OUT/pretrain --preset PRESET --resume ...`` — or, with
``nproc > 1``, as ``torchrun --standalone --nproc-per-node N`` processes (``python -m
torch.distributed.run``). It is never a Dask task: Dask workers are daemonic (no DataLoader workers)
and training wants the whole machine. The trainer's output is streamed line by line.

``--resume`` makes a rerun continue the training in ``OUT/pretrain``; a digest of the shard index it
started from (``OUT/pretrain/shards.json``) makes a rerun on re-curated shards stop with exit 2
instead of resuming on other data::

    command = pretrain_command(out, "fmnist-tiny", ["optim.epochs=2"], nproc=1)
    exit_code = run_pretrain(out, command, print)
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

PRETRAIN_DIR = "pretrain"
SHARDS_DIR = "shards"  # curate.stages.SHARD_DIR
DATA_RECORD = "shards.json"


class PretrainStageError(ValueError):
    """A ``--pretrain`` request that cannot run (bad preset or override, shards changed under a run)."""


def check_request(preset: str, overrides: Sequence[str], nproc: int) -> None:
    """Refuse an unknown preset or override before any curation work (PretrainStageError)."""
    from pretrain.train.config import ConfigError, build_config

    if nproc < 1:
        raise PretrainStageError(f"--pretrain-nproc must be at least 1, got {nproc}")
    try:
        build_config(preset, list(overrides))
    except ConfigError as error:
        raise PretrainStageError(f"--pretrain {preset}: {error}") from None


def pretrain_command(out: Path, preset: str, overrides: Sequence[str], nproc: int = 1,
                     python: str = sys.executable) -> list[str]:
    """The command line of the stage (one process, or torchrun with ``nproc`` processes)."""
    train = ["-m", "pretrain", "train", "--data", str(out / SHARDS_DIR), "--out", str(out / PRETRAIN_DIR),
             "--preset", preset, "--resume", "--no-progress", *overrides]
    if nproc > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *train]
    return [python, *train]


def _index_digest(out: Path) -> str:
    return hashlib.sha256((out / SHARDS_DIR / "index.json").read_bytes()).hexdigest()


def check_same_shards(out: Path) -> None:
    """Record which shards ``OUT/pretrain`` trains on; refuse to resume it on different ones."""
    record = out / PRETRAIN_DIR / DATA_RECORD
    if not (out / SHARDS_DIR / "index.json").is_file():
        raise PretrainStageError(f"{out / SHARDS_DIR}: no index.json, the shard stage wrote no shards")
    digest = _index_digest(out)
    if record.is_file():
        recorded = json.loads(record.read_text()).get("index_sha256")
        if recorded != digest:
            raise PretrainStageError(
                f"{out / PRETRAIN_DIR} trained on other shards (shards/index.json changed since); "
                f"remove that folder to pretrain afresh on the new shards")
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"index_sha256": digest}) + "\n")


def run_pretrain(out: Path, command: Sequence[str], say: Callable[[str], None]) -> int:
    """Run ``command``, passing each line of its output (stdout and stderr) to ``say``; its exit code."""
    check_same_shards(out)
    say("pretrain stage: " + shlex.join(command))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1, env=env) as process:
        assert process.stdout is not None
        for line in process.stdout:
            say(line.rstrip("\n"))
    return process.returncode
