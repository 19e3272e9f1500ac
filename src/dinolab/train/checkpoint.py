"""Training checkpoints: one file, written atomically, loadable with ``torch.load(weights_only=True)``.

Layout (read by other dinolab code; keep it)::

    {"dinolab": {"kind": "pretrain", "version": 1, "arch": ViTConfig.to_dict(), "config": {...}},
     "teacher": {"backbone.*", "dino_head.*"[, "ibot_head.*"]}, "student": {same prefixes},
     "optimizer": ..., "step": int, "total_steps": int, "data_position": {"epoch", "batch"},
     "rng": {"torch": uint8 tensor}, "dino_center": [1, K] | None, "ibot_center": [1, K] | None}

Only tensors, dicts, lists, tuples, strings, numbers, booleans and None are stored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "checkpoint.pth"
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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a dinolab training checkpoint (tensors on CPU)."""
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
    if not isinstance(meta, dict) or meta.get("kind") != "pretrain":
        raise TrainingCheckpointError(f"{path}: not a dinolab pretraining checkpoint (no 'dinolab' kind=pretrain entry)")
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
