"""Knowledge distillation of a frozen large teacher into a smaller student (DINOv2 Sec. 5).

The teacher never changes; the student is trained to match it and an EMA of the student is the
final model. Two modes:

* ``"heads"``: the teacher is a dinolab pretraining checkpoint with its DINO (and iBOT) heads. Its
  backbone and heads, frozen in eval mode, give the centred (softmax or Sinkhorn-Knopp) targets on the
  global crops; the student (a new backbone and new heads with the same K prototypes) is trained with
  the usual DINO (+ iBOT + KoLeo) losses of :class:`~dinolab.train.ssl_model.SSLModel`, whose
  teacher slot holds the frozen teacher instead of an EMA.
* ``"features"``: for backbones without heads (released checkpoints): cosine losses between the
  student's and the teacher's class tokens and patch tokens on the same global crops; a linear
  projection maps the student width to the teacher width when they differ.

Example::

    config = build_config("fmnist-tiny", ["model.arch=vit_pico"])
    result = Distiller(config, "runs/big/checkpoint.pth", "heads", "fashion-mnist", "runs/small").run()
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from dinolab.checkpoints import load_backbone, save_backbone
from dinolab.models.vit import VisionTransformer
from dinolab.train.checkpoint import TrainingCheckpointError, load_checkpoint, save_atomic
from dinolab.train.config import ConfigError, TrainConfig
from dinolab.train.data import open_training_data
from dinolab.train.ema import update_teacher
from dinolab.train.loop import build_optimizer, build_schedules, crops_and_masks
from dinolab.train.monitor import ScalarLog
from dinolab.train.param_groups import apply_schedules
from dinolab.train.ssl_model import SSLModel, build_backbone, build_network
from dinolab.train.tensor_augment import MultiCropBatch, TensorMultiCrop

MODES = ("heads", "features")
DISTILL_CHECKPOINT_NAME = "distill_checkpoint.pth"
STUDENT_BACKBONE_NAME = "student_backbone.pth"
STUDENT_SAFETENSORS_NAME = "student_backbone.safetensors"


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
            "released backbone use --mode features or first train heads with `dinolab pretrain --init-from`"
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
    losses: list[float] = field(default_factory=list)  # total loss of every step
    exported: list[Path] = field(default_factory=list)


class Distiller:
    """One distillation run: frozen teacher, trained student, EMA student; :meth:`run` trains and exports.

    ``config`` describes the student (architecture, crops, losses, optimiser); in heads mode its head
    section is replaced by the teacher's, so the student has the same K prototypes.
    """

    def __init__(self, config: TrainConfig, teacher: str | Path, mode: str, data: str, out_dir: str | Path,
                 *, data_limit: int | None = None, progress: bool = True) -> None:
        if mode not in MODES:
            raise ConfigError(f"distillation mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.teacher_source = str(teacher)
        self.out_dir = Path(out_dir)
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        self.progress = progress
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
        self.schedules = build_schedules(config, self.total_steps, self.steps_per_epoch, config.optim.batch_size)
        self.step = 0

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
        if not torch.isfinite(losses["total"]):
            raise FloatingPointError(f"distillation loss is not finite at step {step}; lower optim.base_lr")
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
        self.model.train()
        self.model.teacher.eval()
        log = ScalarLog(self.out_dir, tensorboard=False)
        result = DistillResult(self.out_dir, 0)
        bar = tqdm(total=self.total_steps, disable=not self.progress, desc=f"distill ({self.mode})",
                   unit="step", dynamic_ncols=True)
        while self.step < self.total_steps:
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
                if self.step % self.config.run.log_every == 0 or self.step == self.total_steps:
                    log.log(self.step, scalars)
        bar.close()
        log.close()
        result.steps = self.step
        self.save()
        result.exported = self.export()
        return result

    def state(self) -> dict[str, Any]:
        return {
            "dinolab": {"kind": "distill", "version": 1, "mode": self.mode, "teacher": self.teacher_source,
                        "arch": self.ema["backbone"].config.to_dict(), "config": self.config.to_dict()},
            "student": self.model.student.state_dict(),
            "ema": self.ema.state_dict(),
            "step": self.step,
        }

    def save(self) -> Path:
        return save_atomic(self.state(), self.out_dir / DISTILL_CHECKPOINT_NAME)

    def export(self) -> list[Path]:
        """The EMA student backbone (the final model) in the released layout and as safetensors."""
        backbone = self.ema["backbone"]
        return [
            save_backbone(backbone, self.out_dir / STUDENT_BACKBONE_NAME, fmt="hub", overwrite=True),
            save_backbone(backbone, self.out_dir / STUDENT_SAFETENSORS_NAME, fmt="safetensors", overwrite=True),
        ]

