"""The pretraining stage of ``curate run --pretrain PRESET``: the trainer on the run's new shards.

It starts after the report stage, once the Dask cluster is closed, as its own process —
``python -m dinolab.pretrain train --data OUT/shards --out OUT/pretrain --preset PRESET --resume ...`` — or, with
``nproc > 1``, as ``torchrun --standalone --nproc-per-node N`` processes (``python -m
torch.distributed.run``). It is never a Dask task: Dask workers are daemonic (no DataLoader workers)
and training wants the whole machine. The trainer's output is streamed line by line.

``--resume`` makes a rerun continue the training in ``OUT/pretrain``; a digest of the shard index it
started from (``OUT/pretrain/shards.json``) makes a rerun on re-curated shards stop with exit 2
instead of resuming on other data::

    command = pretrain_command(out, "fmnist-tiny", ["optim.epochs=2"], nproc=1)
    exit_code = run_pretrain(out, command, print)

With ``OUT`` in an object store (:class:`curate.output.RemotePath`) the trainer reads the shards from
their URL and writes to a local ``pretrain_out`` folder (``curate run --pretrain-out``). Its storage
options travel as ``--storage-option`` flags, but for the secret ones, which reach the process only
through its environment (:data:`STORAGE_OPTIONS_ENV`, JSON), never its command line or output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dinolab.core.storage import INDEX_NAME, SHARD_DIR, STORAGE_OPTIONS_ENV
from dinolab.curate import output
from dinolab.curate.output import Location, RemotePath
from dinolab.schemas.storage import is_secret

PRETRAIN_DIR = "pretrain"
DATA_RECORD = "shards.json"


class PretrainStageError(ValueError):
    """A ``--pretrain`` request that cannot run (bad preset or override, shards changed under a run)."""


def check_request(preset: str, overrides: Sequence[str], nproc: int) -> None:
    """Refuse an unknown preset or override before any curation work (PretrainStageError)."""
    from dinolab.pretrain.train.config import ConfigError, build_config

    if nproc < 1:
        raise PretrainStageError(f"--pretrain-nproc must be at least 1, got {nproc}")
    try:
        build_config(preset, list(overrides))
    except ConfigError as error:
        raise PretrainStageError(f"--pretrain {preset}: {error}") from None


def trainer_dir(out: Location, pretrain_out: Path | None = None) -> Path:
    """Where the trainer writes: ``pretrain_out``, else ``OUT/pretrain`` (which a remote ``OUT`` cannot be)."""
    if pretrain_out is not None:
        return Path(pretrain_out)
    if isinstance(out, RemotePath):
        raise PretrainStageError(f"--out {out} is in an object store: give the trainer a local folder "
                                 "with --pretrain-out")
    return out / PRETRAIN_DIR


def option_flags(options: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``--storage-option KEY=VALUE`` flags of the options that are not secret (nested ones as ``a.b=v``)."""
    flags = []
    for name, value in options.items():
        if is_secret(str(name)):
            continue
        if isinstance(value, Mapping):
            flags += option_flags(value, f"{prefix}{name}.")
        else:
            flags += ["--storage-option", f"{prefix}{name}={str(value).lower() if isinstance(value, bool) else value}"]
    return flags


def pretrain_command(out: Location, preset: str, overrides: Sequence[str], nproc: int = 1,
                     python: str = sys.executable, pretrain_out: Path | None = None) -> list[str]:
    """The command line of the stage (one process, or torchrun with ``nproc`` processes)."""
    options = option_flags(out.storage_options) if isinstance(out, RemotePath) else []
    train = ["-m", "dinolab.pretrain", "train", "--data", str(out / SHARD_DIR), "--out", str(trainer_dir(out, pretrain_out)),
             *options, "--preset", preset, "--resume", "--no-progress", *overrides]
    if nproc > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *train]
    return [python, *train]


def check_same_shards(out: Location, pretrain_out: Path | None = None) -> None:
    """Record which shards the trainer's folder trains on; refuse to resume it on different ones."""
    folder = trainer_dir(out, pretrain_out)
    record = folder / DATA_RECORD
    index = out / SHARD_DIR / INDEX_NAME
    if not output.is_file(index):
        raise PretrainStageError(f"{out / SHARD_DIR}: no index.json, the shard stage wrote no shards")
    digest = hashlib.sha256(output.read_bytes(index)).hexdigest()
    if record.is_file():
        recorded = json.loads(record.read_text()).get("index_sha256")
        if recorded != digest:
            raise PretrainStageError(
                f"{folder} trained on other shards (shards/index.json changed since); "
                f"remove that folder to pretrain afresh on the new shards")
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"index_sha256": digest}) + "\n")


def run_pretrain(out: Location, command: Sequence[str], say: Callable[[str], None],
                 pretrain_out: Path | None = None) -> int:
    """Run ``command``, passing each line of its output (stdout and stderr) to ``say``; its exit code."""
    check_same_shards(out, pretrain_out)
    say("pretrain stage: " + shlex.join(command))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if isinstance(out, RemotePath) and out.storage_options:
        env[STORAGE_OPTIONS_ENV] = json.dumps(dict(out.storage_options))
    with subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1, env=env) as process:
        assert process.stdout is not None
        for line in process.stdout:
            say(line.rstrip("\n"))
    return process.returncode
