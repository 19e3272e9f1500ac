"""Training-state checkpoints with ``torch.distributed.checkpoint`` (DCP), independent of world size.

DCP writes one file per rank plus metadata giving every tensor's GLOBAL shape and each shard's
offsets, so a checkpoint saved by 2 FSDP ranks loads into 1 process (plain tensors) or into 4 ranks,
and the reverse. ``get_state_dict``/``set_state_dict`` translate between the live (sharded, wrapped)
model and optimizer and canonical parameter names (no ``module.`` prefixes), so DDP, FSDP2 and plain
models read each other's checkpoints. Without a process group everything runs in-process.

Example::

    save_training_state("run/ckpt-1000", student, optimizer, {"teacher": teacher}, {"step": 1000})
    extra = load_training_state("run/ckpt-1000", student, optimizer, {"teacher": teacher})
    extra["step"]  # 1000
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful
from torch.optim import Optimizer


class TrainingState(Stateful):
    """Model + optimizer (+ frozen companions such as the EMA teacher) as one DCP ``Stateful``."""

    def __init__(
        self, model: nn.Module, optimizer: Optimizer, companions: Mapping[str, nn.Module] | None = None
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.companions = dict(companions or {})

    def state_dict(self) -> dict[str, Any]:
        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        for name, module in self.companions.items():
            state[name] = get_model_state_dict(module)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_model_state_dict(self.model, state["model"])  # strict: every weight must be there
        # Not strict: parameters that had no optimizer state when saved stay stateless (see below).
        set_optimizer_state_dict(
            self.model, self.optimizer, state["optimizer"], options=StateDictOptions(strict=False)
        )
        for name, module in self.companions.items():
            set_model_state_dict(module, state[name])


def save_training_state(
    path: str | Path,
    model: nn.Module,
    optimizer: Optimizer,
    companions: Mapping[str, nn.Module] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write the training state to the directory ``path`` (every rank calls this).

    ``extra``: small replicated values (step, sampler state, loss centre tensors); rank 0's copy is kept.
    """
    state: dict[str, Any] = {"train": TrainingState(model, optimizer, companions)}
    state["extra"] = dict(extra or {})
    dcp.save(state, checkpoint_id=str(path))


def load_training_state(
    path: str | Path,
    model: nn.Module,
    optimizer: Optimizer,
    companions: Mapping[str, nn.Module] | None = None,
    extra_template: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Load a state written by :func:`save_training_state` at any world size, in place.

    ``extra_template`` names the ``extra`` entries to read (tensors give the shape to load into);
    returns them filled in.
    """
    if not Path(path, ".metadata").is_file():
        raise FileNotFoundError(f"{path} is not a torch.distributed.checkpoint directory (no .metadata)")
    training = TrainingState(model, optimizer, companions)
    state: dict[str, Any] = {"train": training.state_dict(), "extra": dict(extra_template or {})}
    saved_keys = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    _drop_unsaved_optimizer_state(state["train"]["optimizer"], saved_keys, prefix="train.optimizer.state")
    dcp.load(state, checkpoint_id=str(path))
    training.load_state_dict(state["train"])
    return state["extra"]


def _drop_unsaved_optimizer_state(optimizer_state: dict[str, Any], saved_keys: set[str], prefix: str) -> None:
    """Forget optimizer slots of parameters that had no state when saved.

    Parameters that never received a gradient before the save (the mask token of a run without
    masking, a last layer frozen for the first epoch) have no optimizer state in the checkpoint, while
    the freshly initialised template has zeros for them; loading must leave them stateless, as they
    were. Parameters with only part of their slots saved still fail loudly in ``dcp.load``.
    """
    per_parameter = optimizer_state.get("state", {})
    for name in list(per_parameter):
        if not any(f"{prefix}.{name}.{slot}" in saved_keys for slot in per_parameter[name]):
            del per_parameter[name]
