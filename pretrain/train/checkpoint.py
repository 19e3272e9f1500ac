"""Training checkpoints: one file, written atomically, loadable with ``torch.load(weights_only=True)``.

Layout (read by other dinolab code; keep it)::

    {"dinolab": {"kind": "pretrain", "version": 1, "arch": ViTConfig.to_dict(), "config": {...}},
     "teacher": {"backbone.*", "dino_head.*"[, "ibot_head.*"]}, "student": {same prefixes},
     "optimizer": ..., "step": int, "total_steps": int, "data_position": {"epoch", "batch"},
     "rng": {"torch": uint8 tensor}, "dino_center": [1, K] | None, "ibot_center": [1, K] | None,
     "world_size": int (processes that trained it; absent in older files: 1)}

Only tensors, dicts, lists, tuples, strings, numbers, booleans and None are stored. Runs under
``torchrun`` write ``checkpoint.dcp/`` instead (``torch.distributed.checkpoint``, one file per rank,
loadable at any world size; see :mod:`pretrain.parallel.dcp`) and, at their end, a consolidated
``checkpoint.pth`` with the layout above (optimizer state gathered and numbered as for one process).
:func:`newest_checkpoint` picks the one to resume from.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "checkpoint.pth"
DCP_CHECKPOINT_NAME = "checkpoint.dcp"
FORMAT_VERSION = 1


class TrainingCheckpointError(ValueError):
    """A training checkpoint that cannot be read or does not fit the run that wants to resume it."""


def save_atomic(payload: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace`` onto ``path``.

    A reader (or a run killed mid-save) therefore sees either the previous file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, kind: str = "pretrain") -> dict[str, Any]:
    """Load and check a dinolab training checkpoint of ``kind`` ("pretrain" or "distill"; tensors on CPU)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training checkpoint there")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors have many types; report them as one
        raise TrainingCheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    meta = payload.get("dinolab") if isinstance(payload, dict) else None
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        what = "pretraining" if kind == "pretrain" else "distillation"
        raise TrainingCheckpointError(f"{path}: not a dinolab {what} checkpoint (no 'dinolab' kind={kind} entry)")
    if meta.get("version") != FORMAT_VERSION:
        raise TrainingCheckpointError(f"{path}: checkpoint format version {meta.get('version')}, expected {FORMAT_VERSION}")
    return payload


def rng_state() -> dict[str, Any]:
    """Global random states as tensors (drop path and anything else drawing from the default generators)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_state_bytes() -> bytes:
    """:func:`rng_state` serialised (a plain value for the replicated extras of a DCP checkpoint)."""
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    return buffer.getvalue()


def restore_rng_state_bytes(data: bytes) -> None:
    restore_rng_state(torch.load(io.BytesIO(data), weights_only=True))


def is_dcp_checkpoint(path: str | Path) -> bool:
    return Path(path, ".metadata").is_file()


def newest_checkpoint(out_dir: str | Path) -> Path | None:
    """The most recently written of ``<out>/checkpoint.pth`` and ``<out>/checkpoint.dcp/`` (or None)."""
    candidates = []
    single = Path(out_dir) / CHECKPOINT_NAME
    if single.is_file():
        candidates.append((single.stat().st_mtime_ns, single))
    sharded = Path(out_dir) / DCP_CHECKPOINT_NAME
    if is_dcp_checkpoint(sharded):
        candidates.append(((sharded / ".metadata").stat().st_mtime_ns, sharded))
    return max(candidates)[1] if candidates else None


def optimizer_parameter_names(optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> list[str]:
    """Names (in ``module``) of the optimizer's parameters, in the order of ``optimizer.state_dict()``."""
    names = {id(parameter): name for name, parameter in module.named_parameters()}
    return [names[id(parameter)] for group in optimizer.param_groups for parameter in group["params"]]


def optimizer_state_by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """``optimizer.state_dict()`` (parameters numbered) → the named layout of
    ``torch.distributed.checkpoint.state_dict`` (``get/set_optimizer_state_dict``)."""
    return {
        "state": {names[index]: value for index, value in state["state"].items()},
        "param_groups": [{**group, "params": [names[i] for i in group["params"]]} for group in state["param_groups"]],
    }


def optimizer_state_by_index(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The inverse of :func:`optimizer_state_by_name` (for ``optimizer.load_state_dict``)."""
    index = {name: position for position, name in enumerate(names)}
    return {
        "state": {index[name]: value for name, value in state["state"].items()},
        "param_groups": [{**group, "params": [index[n] for n in group["params"]]} for group in state["param_groups"]],
    }
