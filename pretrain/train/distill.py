"""Knowledge distillation of a frozen large teacher into a smaller student (DINOv2 Sec. 5).

The teacher never changes; the student is trained to match it and an EMA of the student is the
final model. Two modes:

* ``"heads"``: the teacher is a dinolab pretraining checkpoint with its DINO (and iBOT) heads. Its
  backbone and heads, frozen in eval mode, give the centred (softmax or Sinkhorn-Knopp) targets on the
  global crops; the student (a new backbone and new heads with the same K prototypes) is trained with
  the usual DINO (+ iBOT + KoLeo) losses of :class:`~pretrain.train.ssl_model.SSLModel`, whose
  teacher slot holds the frozen teacher instead of an EMA.
* ``"features"``: for backbones without heads (released checkpoints): cosine losses between the
  student's and the teacher's class tokens and patch tokens on the same global crops; a linear
  projection maps the student width to the teacher width when they differ.

Like pretraining, a run writes an atomic checkpoint of its full state every
``run.checkpoint_every_steps`` steps or ``run.checkpoint_every_minutes`` minutes, continues exactly
from it with ``resume=True`` (every random draw of a step is seeded by ``(seed, step)``), fits its
schedules to ``run.minutes``, and ends with a k-NN evaluation of the EMA student on Fashion-MNIST
(``run.knn_feature``, ``run.final_eval_*_limit``) written to ``summary.json``.

Example::

    config = build_config("fmnist-tiny", ["model.arch=vit_pico"])
    result = Distiller(config, "runs/big/checkpoint.pth", "heads", "fashion-mnist", "runs/small").run()
    result.final_knn[20]["top1"]
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from dinolab.pretrain.checkpoints import load_backbone, save_backbone
from dinolab.pretrain.data.eval_splits import EvalData, LabelledSplit, fashion_mnist_eval
from dinolab.pretrain.models.vit import VisionTransformer
from dinolab.pretrain.train.checkpoint import (
    TrainingCheckpointError,
    check_same_config,
    load_centers,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_atomic,
)
from dinolab.pretrain.train.config import ConfigError, TrainConfig
from dinolab.pretrain.train.data import FASHION_MNIST, open_training_data
from dinolab.pretrain.train.ema import update_teacher
from dinolab.pretrain.train.knn_eval import knn_evaluate
from dinolab.pretrain.train.loop import (
    TrainingDiverged,
    build_optimizer,
    build_schedules,
    crops_and_masks,
    seconds_per_step,
)
from dinolab.pretrain.train.monitor import ScalarLog
from dinolab.pretrain.train.param_groups import apply_schedules
from dinolab.pretrain.train.ssl_model import SSLModel, build_backbone, build_network
from dinolab.pretrain.train.tensor_augment import MultiCropBatch, TensorMultiCrop

MODES = ("heads", "features")
DISTILL_CHECKPOINT_NAME = "distill_checkpoint.pth"
STUDENT_BACKBONE_NAME = "student_backbone.pth"
STUDENT_SAFETENSORS_NAME = "student_backbone.safetensors"
SUMMARY_NAME = "summary.json"

DistillStepHook = Callable[[int, dict[str, Tensor]], None]


def frozen(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.eval()


def load_teacher_heads(source: str | Path) -> tuple[nn.ModuleDict, TrainConfig]:
    """Teacher backbone + heads of a pretraining checkpoint (file or run folder), frozen, and its config."""
    try:
        state = load_checkpoint(source)
    except (TrainingCheckpointError, FileNotFoundError) as error:
        raise TrainingCheckpointError(
            f"{error}. --mode heads needs a dinolab pretraining checkpoint with its DINO heads; for a "
            "released backbone use --mode features or first train heads with `pretrain train --init-from`"
        ) from None
    config = TrainConfig.from_dict(state["dinolab"]["config"])
    network = build_network(config)
    network.load_state_dict(state["teacher"])
    return frozen(network), config


def load_teacher_backbone(source: str | Path) -> VisionTransformer:
    """The frozen teacher backbone of a pretraining checkpoint, or any source ``load_backbone`` reads."""
    path = Path(source)
    if path.is_file() or (path / "checkpoint.pth").is_file():
        try:
            network, _ = load_teacher_heads(source)
            return frozen(network["backbone"])
        except TrainingCheckpointError:
            pass  # not a pretraining checkpoint: a backbone file
    return frozen(load_backbone(source))


def cosine_distance(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean of ``1 - cos`` over the leading dimensions."""
    return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()


class FeatureDistillation(nn.Module):
    """Student backbone + projection trained to the frozen teacher's CLS and patch tokens."""

    def __init__(self, student: VisionTransformer, teacher: VisionTransformer) -> None:
        super().__init__()
        projection: nn.Module = (nn.Identity() if student.embed_dim == teacher.embed_dim
                                 else nn.Linear(student.embed_dim, teacher.embed_dim))
        self.student = nn.ModuleDict({"backbone": student, "projection": projection})
        self.teacher = teacher

    def forward(self, crops: MultiCropBatch) -> dict[str, Tensor]:
        images = crops.global_crops
        out = self.student["backbone"].forward_features(images)
        h, w = out.grid_hw
        with torch.no_grad():
            patch = self.teacher.patch_size
            if images.shape[-2:] != (h * patch, w * patch):  # same token grid for both networks
                teacher_images = F.interpolate(images, size=(h * patch, w * patch), mode="bilinear",
                                               antialias=True, align_corners=False)
            else:
                teacher_images = images
            target = self.teacher.forward_features(teacher_images)
        project = self.student["projection"]
        losses = {"cls": cosine_distance(project(out.cls_token), target.cls_token),
                  "patch": cosine_distance(project(out.patch_tokens), target.patch_tokens)}
        losses["total"] = losses["cls"] + losses["patch"]
        return losses


@dataclass
class DistillResult:
    out_dir: Path
    steps: int
    total_steps: int = 0
    train_minutes: float = 0.0
    stopped_early: bool = False
    losses: list[float] = field(default_factory=list)  # total loss of every step trained by this call
    final_knn: dict[int, dict[str, float]] | None = None  # k-NN of the EMA student backbone
    exported: list[Path] = field(default_factory=list)


class Distiller:
    """One distillation run: frozen teacher, trained student, EMA student; :meth:`run` trains,
    checkpoints, evaluates and exports.

    ``config`` describes the student (architecture, crops, losses, optimiser, ``run.*``); in heads mode
    its head section is replaced by the teacher's, so the student has the same K prototypes.
    ``resume=True`` continues from ``<out_dir>/distill_checkpoint.pth`` when it exists.
    ``evaluate``: run the final k-NN (on Fashion-MNIST unless ``eval_data`` is given).
    ``step_hook(step, losses)`` is called after each forward (tests inject failures there).
    """

    def __init__(self, config: TrainConfig, teacher: str | Path, mode: str, data: str, out_dir: str | Path,
                 *, resume: bool = False, evaluate: bool = True, eval_data: EvalData | None = None,
                 data_limit: int | None = None, progress: bool = True,
                 step_hook: DistillStepHook | None = None) -> None:
        if mode not in MODES:
            raise ConfigError(f"distillation mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.teacher_source = str(teacher)
        self.out_dir = Path(out_dir)
        self.checkpoint_path = self.out_dir / DISTILL_CHECKPOINT_NAME
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        self.progress = progress
        self.step_hook = step_hook
        if eval_data is None and evaluate and data == FASHION_MNIST:
            eval_data = fashion_mnist_eval(config)
        self.eval_data = eval_data if evaluate else None
        saved = load_checkpoint(self.checkpoint_path, kind="distill") if resume and self.checkpoint_path.is_file() else None
        if saved is not None:
            self._check_saved_run(saved["dinolab"])
        torch.manual_seed(config.run.seed)
        if mode == "heads":
            teacher_network, teacher_config = load_teacher_heads(teacher)
            if teacher_config.model.patch_size != config.model.patch_size:
                raise ConfigError(
                    f"--mode heads needs the teacher's patch size ({teacher_config.model.patch_size}) for "
                    f"the student (iBOT targets are per patch); set model.patch_size or use --mode features")
            config = replace(config, head=teacher_config.head)
            self.model: nn.Module = SSLModel(config)
            self.model.teacher = teacher_network  # the frozen teacher replaces the EMA teacher slot
        else:
            config = replace(config, crops=replace(config.crops, num_local=0))  # global crops only
            self.model = FeatureDistillation(build_backbone(config), load_teacher_backbone(teacher))
        self.config = config
        self.model.to(self.device)
        self.ema = copy.deepcopy(self.model.student)
        frozen(self.ema)
        self.data = open_training_data(data, config.crops.storage_size or round(config.crops.global_size * 1.15),
                                       config.optim.batch_size, config.run.seed, config.run.num_workers,
                                       limit=data_limit)
        self.augment = TensorMultiCrop(config.crops)
        self.optimizer = build_optimizer(config, self.model)  # type: ignore[arg-type]
        self.student_params = list(self.model.student.parameters())
        self.ema_params = list(self.ema.parameters())
        self.steps_per_epoch = self.data.batches_per_epoch
        self.total_steps = max(1, math.ceil(config.optim.epochs * self.steps_per_epoch))
        self.step = 0
        self.knn_history: list[dict[str, Any]] = []
        if saved is not None:
            check_same_config(saved["dinolab"]["config"], 1, config, 1, self.checkpoint_path)
            self._load(saved)
        elif config.run.minutes is not None:
            self.total_steps = min(self.total_steps, self._steps_in_budget(config.run.minutes))
        self.schedules = build_schedules(config, self.total_steps, self.steps_per_epoch, config.optim.batch_size)

    def train_step(self, images: Tensor, step: int) -> dict[str, Tensor]:
        """Forward (frozen teacher targets), backward, clip, AdamW step, EMA of the student."""
        values = self.schedules.at(step)
        apply_schedules(self.optimizer, values["lr"], values["weight_decay"], values["last_layer_lr"])
        crops, masks = crops_and_masks(self.config, self.augment, images, step, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            if self.mode == "heads":
                output = self.model(crops, masks, values["teacher_temp"])
                losses = output.losses
            else:
                losses = self.model(crops)
        if self.step_hook is not None:
            self.step_hook(step, losses)
        if not torch.isfinite(losses["total"]):
            raise TrainingDiverged(
                f"distillation loss is not finite at step {step}; stopped, the last good checkpoint "
                f"({self.checkpoint_path}) is kept. Lower optim.base_lr")
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        if self.config.optim.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.student_params, self.config.optim.clip_grad)
        self.optimizer.step()
        if self.mode == "heads":
            self.model.update_centers(output)  # softmax centring of the teacher's outputs
        update_teacher(self.student_params, self.ema_params, values["teacher_momentum"])
        return losses

    def run(self) -> DistillResult:
        config = self.config
        self.model.train()
        self.model.teacher.eval()
        log = ScalarLog(self.out_dir, tensorboard=False)
        result = DistillResult(self.out_dir, self.step, self.total_steps)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.progress,
                   desc=f"distill ({self.mode})", unit="step", dynamic_ncols=True)
        started = last_checkpoint = time.monotonic()
        budget_s = config.run.minutes * 60 if config.run.minutes is not None else None
        while self.step < self.total_steps and not result.stopped_early:
            epoch, batch_index = divmod(self.step, self.steps_per_epoch)
            for images in self.data.batches(epoch, batch_index):
                if self.step >= self.total_steps:
                    break
                if images.shape[0] < 2:  # a batch made of unreadable files
                    self.step += 1
                    continue
                losses = self.train_step(images, self.step)
                self.step += 1
                scalars = {key: float(value.detach()) for key, value in losses.items()}
                result.losses.append(scalars["total"])
                bar.update(1)
                bar.set_postfix({key: f"{value:.3f}" for key, value in scalars.items()})
                if self.step % config.run.log_every == 0 or self.step == self.total_steps:
                    log.log(self.step, scalars)
                now = time.monotonic()
                if (self.step % config.run.checkpoint_every_steps == 0
                        or now - last_checkpoint > config.run.checkpoint_every_minutes * 60):
                    self.save()
                    last_checkpoint = now
                if budget_s is not None and now - started > 1.1 * budget_s and self.step < self.total_steps:
                    bar.write(f"time budget of {config.run.minutes} min exceeded by 10%: stopping at step "
                              f"{self.step} of {self.total_steps}")
                    result.stopped_early = True
                    break
        bar.close()
        result.train_minutes = (time.monotonic() - started) / 60
        result.steps = self.step
        self.save()
        if self.eval_data is not None:
            result.final_knn = self._evaluate(self.eval_data.final, log)
        log.close()
        result.exported = self.export()
        self.write_summary(result)
        return result

    def _evaluate(self, splits: tuple[LabelledSplit, LabelledSplit], log: ScalarLog) -> dict[int, dict[str, float]]:
        """k-NN accuracy of the EMA student backbone (the final model), printed and logged."""
        accuracy = knn_evaluate(self.ema["backbone"], *splits, feature=self.config.run.knn_feature)
        record = {f"top1_k{k}": v["top1"] for k, v in accuracy.items()}
        self.knn_history.append({"step": self.step, "kind": "knn_final", **record})
        log.log(self.step, record, kind="knn_final")
        tqdm.write(f"k-NN of the EMA student (step {self.step}): "
                   + ", ".join(f"k={k} top-1 {v['top1']:.2f}%" for k, v in accuracy.items()))
        return accuracy

    def _steps_in_budget(self, minutes: float) -> int:
        """How many steps fit in ``minutes``: time a few steps of a throwaway copy of the networks."""
        probe = copy.copy(self)
        probe.model = copy.deepcopy(self.model)
        probe.ema = copy.deepcopy(self.ema)
        probe.optimizer = build_optimizer(self.config, probe.model)  # type: ignore[arg-type]
        probe.student_params = list(probe.model.student.parameters())
        probe.ema_params = list(probe.ema.parameters())
        probe.schedules = build_schedules(self.config, self.total_steps, self.steps_per_epoch,
                                          self.config.optim.batch_size)
        probe.step_hook = None
        seconds = seconds_per_step(probe.train_step, next(self.data.batches(0, 0)))
        return max(1, int(minutes * 60 / seconds))

    def _check_saved_run(self, meta: dict[str, Any]) -> None:
        """Refuse to resume a checkpoint of another mode or teacher."""
        if meta.get("mode") != self.mode:
            raise TrainingCheckpointError(
                f"{self.checkpoint_path}: written by a --mode {meta.get('mode')} run, not --mode {self.mode}; "
                "resume with the same mode or use another --out folder")
        if Path(meta.get("teacher", "")).resolve() != Path(self.teacher_source).resolve():
            raise TrainingCheckpointError(
                f"{self.checkpoint_path}: distilled from teacher {meta.get('teacher')}, not {self.teacher_source}; "
                "resume with the same --teacher or use another --out folder")

    def state(self) -> dict[str, Any]:
        """The full state of the run (read back by ``resume=True``)."""
        epoch, batch_index = divmod(self.step, self.steps_per_epoch)
        heads = self.mode == "heads"
        return {
            "dinolab": {"kind": "distill", "version": 1, "mode": self.mode, "teacher": self.teacher_source,
                        "arch": self.ema["backbone"].config.to_dict(), "config": self.config.to_dict()},
            "student": self.model.student.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "total_steps": self.total_steps,
            "data_position": {"epoch": epoch, "batch": batch_index},
            "rng": rng_state(),
            "dino_center": self.model.dino_loss.center.detach().cpu() if heads else None,
            "ibot_center": (self.model.ibot_loss.center.detach().cpu()
                            if heads and self.model.ibot_loss is not None else None),
            "knn_history": self.knn_history,
        }

    def _load(self, state: dict[str, Any]) -> None:
        """Weights, optimiser, centres, progress and random state of a distillation checkpoint."""
        self.model.student.load_state_dict(state["student"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.mode == "heads":
            load_centers(self.model, state)
        self.step = int(state["step"])
        self.total_steps = int(state["total_steps"])
        self.knn_history = list(state.get("knn_history", []))
        restore_rng_state(state["rng"])

    def save(self) -> Path:
        """Write the checkpoint atomically; refuses (TrainingDiverged) when the weights are not finite."""
        if not all(bool(torch.isfinite(p.detach()).all()) for p in self.student_params):
            raise TrainingDiverged(
                f"student weights are not finite at step {self.step}; stopped without saving, the last "
                f"good checkpoint in {self.out_dir} is kept. Lower optim.base_lr or optim.clip_grad.")
        return save_atomic(self.state(), self.checkpoint_path)

    def export(self) -> list[Path]:
        """The EMA student backbone (the final model) in the released layout and as safetensors."""
        backbone = self.ema["backbone"]
        return [
            save_backbone(backbone, self.out_dir / STUDENT_BACKBONE_NAME, fmt="hub", overwrite=True),
            save_backbone(backbone, self.out_dir / STUDENT_SAFETENSORS_NAME, fmt="safetensors", overwrite=True),
        ]

    def write_summary(self, result: DistillResult) -> Path:
        """``summary.json``: mode, teacher, steps, training minutes and the final k-NN of the EMA student."""
        summary = {
            "mode": self.mode, "teacher": self.teacher_source, "steps": result.steps,
            "total_steps": result.total_steps, "train_minutes": result.train_minutes,
            "stopped_early": result.stopped_early, "knn_feature": self.config.run.knn_feature,
            "knn": ({str(k): v for k, v in result.final_knn.items()} if result.final_knn is not None else None),
            "knn_history": self.knn_history,
        }
        path = self.out_dir / SUMMARY_NAME
        path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return path
