"""A short high-resolution adaptation phase started from an earlier pretraining checkpoint.

DINOv2 (Oquab et al. 2023, Sec. 5 "Adapting the resolution") ends pretraining with a brief phase at
518 px for patch 14: the earlier run's student, teacher and heads are kept, the optimiser and the
schedules start afresh over the phase's own (short) length, and the position embeddings are
interpolated by the backbone at forward time, so no weight changes shape.

Example::

    config = high_res_config(build_config("dinov2-vits14", ["optim.epochs=1"]))  # globals 518 px
    Trainer(config, "photos/", "runs/highres", init_from="runs/base/checkpoint.pth").run()
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from dinolab.pretrain.checkpoints import CheckpointError, read_backbone
from dinolab.pretrain.train.checkpoint import TrainingCheckpointError, load_checkpoint
from dinolab.pretrain.train.config import TrainConfig, validate
from dinolab.pretrain.train.ssl_model import SSLModel

HIGH_RES_GLOBAL_SIZE = {14: 518, 16: 512}  # the released DINOv2 / common ViT-16 high-resolution sizes


def _multiple(size: float, patch: int) -> int:
    return max(patch, round(size / patch) * patch)


def high_res_config(config: TrainConfig, global_size: int | None = None) -> TrainConfig:
    """``config`` with global crops at ``global_size`` (default: 518 for patch 14, 512 for 16, else
    twice the current size) and local crops (and the stored image size) scaled by the same factor,
    rounded to multiples of the patch size."""
    patch = config.model.patch_size
    crops = config.crops
    size = global_size or HIGH_RES_GLOBAL_SIZE.get(patch, 2 * crops.global_size)
    factor = size / crops.global_size
    storage = None if crops.storage_size is None else max(size, round(crops.storage_size * factor))
    new = replace(config, crops=replace(crops, global_size=size, storage_size=storage,
                                        local_size=_multiple(crops.local_size * factor, patch)))
    validate(new)
    return new


def init_from_source(model: SSLModel, source: str | Path) -> None:
    """Start a phase from ``source``: a pretraining checkpoint (or run folder) gives every weight
    (:func:`init_from_checkpoint`); a backbone file or Hugging Face folder (e.g. released weights, which
    ship without heads) gives the student and teacher backbones, the heads start from scratch."""
    try:
        state = load_checkpoint(source)
    except TrainingCheckpointError as error:
        if "not a dinolab pretraining checkpoint" not in str(error) and "not a readable" not in str(error):
            raise
    else:
        init_from_checkpoint(model, state, source)
        return
    try:
        _, weights = read_backbone(source)
    except CheckpointError as error:
        raise TrainingCheckpointError(f"{source}: neither a pretraining checkpoint nor a backbone ({error})") from None
    if weights is None:
        raise TrainingCheckpointError(f"{source}: an architecture name has no weights to start from")
    for network in (model.student, model.teacher):
        try:
            network["backbone"].load_state_dict(weights)
        except RuntimeError as error:
            first = str(error).splitlines()[1:2] or [str(error)]
            raise TrainingCheckpointError(
                f"{source}: the backbone does not fit this configuration (set model.* to its "
                f"architecture): {first[0].strip()}") from None


def init_from_checkpoint(model: SSLModel, state: dict[str, Any], source: str | Path) -> None:
    """Load student, teacher (backbone and heads) and the softmax centres of a pretraining checkpoint;
    never its optimiser, step or schedules (the phase is a new run)."""
    try:
        model.student.load_state_dict(state["student"])
        model.teacher.load_state_dict(state["teacher"])
    except RuntimeError as error:
        first = str(error).splitlines()[1:2] or [str(error)]
        raise TrainingCheckpointError(
            f"{source}: its weights do not fit this configuration (use the same model and head "
            f"settings as the run that wrote it): {first[0].strip()}") from None
    if state.get("dino_center") is not None:
        model.dino_loss.center.copy_(state["dino_center"])
    if model.ibot_loss is not None and state.get("ibot_center") is not None:
        model.ibot_loss.center.copy_(state["ibot_center"])
