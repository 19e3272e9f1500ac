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

The pretraining loop hands its checkpoints to this module: it describes where the run stands as a
``progress`` dict (:func:`run_progress`) and calls :func:`training_state` / :func:`save_dcp` /
:func:`save_consolidated` to write, :func:`restore_single_file` / :func:`load_optimizer_state` /
:func:`restore_dcp` to resume.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dinolab.pretrain import distributed

if TYPE_CHECKING:
    from dinolab.pretrain.train.config import TrainConfig
    from dinolab.pretrain.train.ssl_model import SSLModel

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


def check_same_config(saved_config: dict[str, Any], saved_world: int, config: TrainConfig, world: int,
                      where: Path) -> None:
    """Refuse a checkpoint of another configuration; only ``run.*`` and the split of the global
    batch over processes (``optim.batch_size`` × world size) may change."""
    as_json = lambda config: json.loads(json.dumps(config))  # noqa: E731  (tuples and lists compare equal)
    saved, current = as_json(saved_config), as_json(config.to_dict())
    saved.pop("run", None), current.pop("run", None)
    saved_batch = saved["optim"]["batch_size"] * saved_world
    current_batch = current["optim"]["batch_size"] * world
    saved["optim"] = {**saved["optim"], "batch_size": saved_batch}
    current["optim"] = {**current["optim"], "batch_size": current_batch}
    if saved != current:
        changed = sorted(key for key in current if saved.get(key) != current[key])
        batch_note = ""
        if saved_batch != current_batch:
            batch_note = (f"; the global batch was {saved_batch} ({saved_world} process(es)), now "
                          f"{current_batch} ({world}): set optim.batch_size to global batch / processes")
        raise TrainingCheckpointError(
            f"{where}: the checkpoint was trained with a different configuration "
            f"(sections {', '.join(changed)} differ){batch_note}; resume with the same preset and "
            "overrides (only run.* settings may change) or use another --out folder"
        )


def load_centers(model: SSLModel, state: dict[str, Any]) -> None:
    """A single-file checkpoint's DINO (and iBOT) centres into ``model``'s losses."""
    model.dino_loss.center.copy_(state["dino_center"])
    if model.ibot_loss is not None and state.get("ibot_center") is not None:
        model.ibot_loss.center.copy_(state["ibot_center"])


def run_progress(step: int, total_steps: int, steps_per_epoch: int, world: int,
                 knn_history: list[dict[str, Any]]) -> dict[str, Any]:
    """Where a run stands, as both checkpoint kinds store it (besides weights, optimiser, centres, RNG)."""
    epoch, batch_index = divmod(step, steps_per_epoch)
    return {"step": step, "total_steps": total_steps, "world_size": world,
            "data_position": {"epoch": epoch, "batch": batch_index}, "knn_history": knn_history}


def training_state(config: TrainConfig, model: SSLModel, progress: dict[str, Any], student: dict[str, Any],
                   teacher: dict[str, Any], optimizer: dict[str, Any]) -> dict[str, Any]:
    """The single-file checkpoint (layout in the module docstring) of full state dicts at ``progress``."""
    return {
        "dinolab": {"kind": "pretrain", "version": FORMAT_VERSION, "arch": model.student["backbone"].config.to_dict(),
                    "config": config.to_dict()},
        "teacher": teacher,
        "student": student,
        "optimizer": optimizer,
        **progress,
        "rng": rng_state(),
        "dino_center": model.dino_loss.center.detach().cpu(),
        "ibot_center": model.ibot_loss.center.detach().cpu() if model.ibot_loss is not None else None,
    }


def restore_single_file(model: SSLModel, state: dict[str, Any]) -> dict[str, Any]:
    """Weights, centres and global RNG of a single-file checkpoint into ``model`` (before wrapping or
    sharding); returns the saved progress (step, total_steps, knn_history)."""
    model.teacher.load_state_dict(state["teacher"])
    model.student.load_state_dict(state["student"])
    load_centers(model, state)
    restore_rng_state(state["rng"])
    return {"step": int(state["step"]), "total_steps": int(state["total_steps"]),
            "knn_history": list(state.get("knn_history", []))}


def load_optimizer_state(model: SSLModel, optimizer: torch.optim.Optimizer, saved: dict[str, Any],
                         names: list[str], sharded: bool) -> None:
    """A single-file checkpoint's optimiser state into the run's (possibly sharded) optimiser."""
    if not sharded:
        optimizer.load_state_dict(saved)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model.student, optimizer, optimizer_state_by_name(saved, names),
                             options=StateDictOptions(full_state_dict=True))


def dcp_extras(config: TrainConfig, model: SSLModel, progress: dict[str, Any]) -> dict[str, Any]:
    """The replicated values stored next to the DCP shards; :func:`restore_dcp` reads them back."""
    extras: dict[str, Any] = {
        **{key: progress[key] for key in ("step", "total_steps", "world_size", "data_position")},
        "dino_center": model.dino_loss.center,
        "rng": rng_state_bytes(),
        "knn_history": json.dumps(progress["knn_history"]),
        "config": json.dumps(config.to_dict()),
    }
    if model.ibot_loss is not None:
        extras["ibot_center"] = model.ibot_loss.center
    return extras


def save_dcp(out_dir: Path, config: TrainConfig, model: SSLModel, optimizer: torch.optim.Optimizer,
             progress: dict[str, Any]) -> None:
    """Every rank writes its shards to a temporary folder, which then replaces ``checkpoint.dcp/`` (collective)."""
    from dinolab.pretrain.parallel import save_training_state

    final = out_dir / DCP_CHECKPOINT_NAME
    partial, previous = final.with_name(f".{final.name}.tmp"), final.with_name(f".{final.name}.old")
    if distributed.is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
    distributed.barrier()
    save_training_state(partial, model.student, optimizer, {"teacher": model.teacher},
                        dcp_extras(config, model, progress))
    distributed.barrier()
    if distributed.is_main_process():
        if final.exists():
            final.rename(previous)
        partial.rename(final)
        shutil.rmtree(previous, ignore_errors=True)
    distributed.barrier()


def save_consolidated(path: Path, config: TrainConfig, model: SSLModel, optimizer: torch.optim.Optimizer,
                      optimizer_names: list[str], progress: dict[str, Any]) -> None:
    """Gather the full weights and optimiser state and write the single file ``path`` from rank 0 (collective)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    student = get_model_state_dict(model.student, options=full)
    teacher = get_model_state_dict(model.teacher, options=full)
    optimizer_state = get_optimizer_state_dict(model.student, optimizer, options=full)
    if distributed.is_main_process():
        optimizer_state = optimizer_state_by_index(optimizer_state, optimizer_names)
        save_atomic(training_state(config, model, progress, student, teacher, optimizer_state), path)
    distributed.barrier()


def restore_dcp(path: Path, config: TrainConfig, model: SSLModel, optimizer: torch.optim.Optimizer,
                progress: dict[str, Any]) -> dict[str, Any]:
    """Resume from ``checkpoint.dcp/`` (saved at any world size; collective under torchrun): weights,
    optimiser, centres (in place) and RNG; ``progress`` is the run's current one. Returns the saved
    progress (step, total_steps, knn_history)."""
    import torch.distributed.checkpoint as dcp

    from dinolab.pretrain.parallel import load_training_state

    header = {"extra": {"config": "", "world_size": 0}}
    dcp.load(header, checkpoint_id=str(path))
    check_same_config(json.loads(header["extra"]["config"]), int(header["extra"]["world_size"]), config,
                      progress["world_size"], path)
    extras = load_training_state(path, model.student, optimizer, {"teacher": model.teacher},
                                 dcp_extras(config, model, progress))
    restore_rng_state_bytes(extras["rng"])  # centres were loaded in place into the template tensors
    return {"step": int(extras["step"]), "total_steps": int(extras["total_steps"]),
            "knn_history": json.loads(extras["knn_history"])}
