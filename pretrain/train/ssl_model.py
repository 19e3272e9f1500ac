"""Student and teacher networks and the forward pass that computes every loss of one batch.

DINO (Caron et al. 2021, Sec. 3.1): the teacher (an EMA of the student, no gradients) sees the two
global crops; the student sees all crops; a cross-entropy pulls each student crop's prototype
distribution towards the teacher's distribution of every *other* global crop. DINOv2 (Oquab et al.
2023, Sec. 4) adds the iBOT masked-patch loss (student gets mask tokens on half of the global crops,
the teacher sees them whole), the KoLeo spreading term on the student's class tokens and
Sinkhorn-Knopp centring of the teacher.

Data parallel runs (each process holds a share of the global batch) compute the same losses as one
process on the global batch: the Sinkhorn-Knopp sums, the masked-patch count and the softmax centre
are reduced over processes, the iBOT loss is normalised by the global number of masked images, and
DINO's per-image mean is the mean of equal shares. KoLeo stays per process (neighbours are searched
within the local batch, as in the released code).

Example::

    model = SSLModel(config)
    step = model(crops, masks, teacher_temp=0.04)   # step.losses: scalar tensors, "total" included
    step.losses["total"].backward(); model.update_centers(step)
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dinolab.pretrain import distributed
from dinolab.pretrain.models.packing import forward_features_packed
from dinolab.pretrain.models.presets import build_vit
from dinolab.pretrain.models.vit import Preprocessing, VisionTransformer
from dinolab.pretrain.train.config import TrainConfig
from dinolab.pretrain.train.heads import DINOHead
from dinolab.pretrain.train.losses.dino import DINOLoss
from dinolab.pretrain.train.losses.ibot import IBOTPatchLoss
from dinolab.pretrain.train.losses.koleo import KoLeoLoss
from dinolab.pretrain.train.masking import masks_weight
from dinolab.pretrain.train.tensor_augment import MultiCropBatch


def build_backbone(config: TrainConfig) -> VisionTransformer:
    """The backbone described by ``config.model``, with preprocessing matching the training crops."""
    model = config.model
    overrides = {
        key: getattr(model, key)
        for key in ("embed_dim", "depth", "num_heads", "mlp_ratio")
        if getattr(model, key) is not None
    }
    crops = config.crops
    resize = crops.storage_size or round(crops.global_size * 256 / 224)
    preprocessing = Preprocessing(input_size=crops.global_size, resize_size=max(resize, crops.global_size))
    return build_vit(
        model.arch,
        patch_size=model.patch_size,
        img_size=model.img_size,
        num_register_tokens=model.num_register_tokens,
        layerscale_init=model.layerscale_init,
        drop_path_rate=model.drop_path_rate,
        preprocessing=preprocessing,
        **overrides,
    )


def build_network(config: TrainConfig) -> nn.ModuleDict:
    """``{"backbone", "dino_head"[, "ibot_head"]}``: the parameter names of training checkpoints."""
    backbone = build_backbone(config)
    head = config.head
    parts: dict[str, nn.Module] = {
        "backbone": backbone,
        "dino_head": DINOHead(backbone.embed_dim, head.out_dim, head.hidden_dim, head.bottleneck_dim,
                              head.nlayers),
    }
    if config.uses_ibot and head.separate_ibot_head:
        parts["ibot_head"] = DINOHead(backbone.embed_dim, head.ibot_out_dim or head.out_dim,
                                      head.hidden_dim, head.bottleneck_dim, head.nlayers)
    return nn.ModuleDict(parts)


def apply_block_options(backbone: VisionTransformer, *, compile: bool = False, compile_backend: str = "inductor",
                        activation_checkpointing: bool = False) -> None:
    """Compile and/or checkpoint the attention and MLP branches of every block, in place.

    Both options act on the two residual branches (``Block._attn_branch``, ``Block._ffn_branch``), which
    the plain and the packed forward (:mod:`pretrain.models.packing`) both call, so they apply to either
    path; stochastic depth and the residual sums stay eager. Parameter names do not change, so state
    dicts and checkpoints are unaffected. Activation checkpointing is non-reentrant
    (``torch.utils.checkpoint``): each branch's inner activations are recomputed in backward; its input
    is kept.
    """
    if not (compile or activation_checkpointing):
        return
    from torch.utils.checkpoint import checkpoint

    for block in backbone.blocks:
        for name in ("_attn_branch", "_ffn_branch"):
            branch = getattr(block, name)
            if compile:
                branch = torch.compile(branch, backend=compile_backend)
            if activation_checkpointing:
                branch = functools.partial(checkpoint, branch, use_reentrant=False)
            setattr(block, name, branch)


@dataclass
class TeacherOutput:
    """Teacher targets for one batch: per-global-crop class probabilities and masked-patch probabilities."""

    cls_probs: list[Tensor]  # 2 x [B, K]
    cls_logits: Tensor  # [2B, K], for the centre update and the collapse monitor
    patch_probs: Tensor | None  # [M, K] at the masked positions
    patch_logits: Tensor | None


@dataclass
class SSLStepOutput:
    """Losses of one batch plus the detached tensors the centre update and the collapse monitor need."""

    losses: dict[str, Tensor]
    teacher: TeacherOutput
    student_cls: Tensor  # [2B, D] pre-head class tokens of the global crops (detached)


def _global_ibot_scale(local_masked_images: Tensor) -> Tensor:
    """Factor turning this process's iBOT loss (normalised by its own masked images) into its share of
    the global loss: ``local · world / global``, so that the mean over processes (the gradient
    average of DDP / FSDP) equals the loss over the global batch."""
    local = local_masked_images.detach()
    total = distributed.all_reduce_sum(local)
    return local.clamp(min=1) * distributed.world_size() / total.clamp(min=1)


class SSLModel(nn.Module):
    """Student, EMA teacher and losses of the DINO / DINOv2 recipe (see module docstring).

    ``forward`` returns the losses of one batch; call :meth:`update_centers` with its output after the
    optimiser step (explicitly: the losses never change their state inside ``forward``).
    """

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.config = config
        self.student = build_network(config)
        self.teacher = copy.deepcopy(self.student)
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        loss = config.loss
        self.dino_loss = DINOLoss(config.head.out_dim, loss.student_temp, loss.center_momentum)
        self.ibot_loss = (
            IBOTPatchLoss(config.head.ibot_out_dim or config.head.out_dim, loss.student_temp,
                          loss.center_momentum)
            if config.uses_ibot else None
        )
        self.koleo_loss = KoLeoLoss() if config.uses_koleo else None

    # ---------------------------------------------------------------- heads
    def _ibot_head(self, network: nn.ModuleDict) -> nn.Module:
        return network["ibot_head"] if "ibot_head" in network else network["dino_head"]

    # --------------------------------------------------------------- teacher
    @torch.no_grad()
    def teacher_targets(self, global_crops: Tensor, masks: Tensor | None, teacher_temp: float) -> TeacherOutput:
        """Teacher outputs on the unmasked global crops, centred (softmax or Sinkhorn-Knopp)."""
        self.teacher.eval()
        out = self.teacher["backbone"].forward_features(global_crops)
        cls_logits = self.teacher["dino_head"](out.cls_token)
        sinkhorn = self.config.loss.centering == "sinkhorn"
        if sinkhorn:
            cls_probs = self.dino_loss.sinkhorn_knopp_teacher(cls_logits, teacher_temp)
        else:
            cls_probs = self.dino_loss.softmax_center_teacher(cls_logits, teacher_temp)
        patch_probs = patch_logits = None
        if self.ibot_loss is not None and masks is not None:
            patch_logits = self._ibot_head(self.teacher)(out.patch_tokens[masks])
            if sinkhorn:  # this process's count: sinkhorn_knopp sums it over processes
                n_masked = torch.tensor(patch_logits.shape[0], device=patch_logits.device)
                patch_probs = self.ibot_loss.sinkhorn_knopp_teacher(patch_logits, teacher_temp, n_masked)
            else:
                patch_probs = self.ibot_loss.softmax_center_teacher(patch_logits, teacher_temp)
        return TeacherOutput(list(cls_probs.chunk(2)), cls_logits, patch_probs, patch_logits)

    # --------------------------------------------------------------- forward
    def forward(self, crops: MultiCropBatch, masks: Tensor | None, teacher_temp: float) -> SSLStepOutput:
        """All losses of one batch. ``masks``: Bool ``[2B, h*w]`` for the global crops (iBOT) or None."""
        config = self.config.loss
        teacher = self.teacher_targets(crops.global_crops, masks, teacher_temp)

        images = [crops.global_crops] + ([crops.local_crops] if crops.local_crops is not None else [])
        crop_masks = [masks] + [None] * (len(images) - 1)
        if self.config.run.packing:
            outputs = forward_features_packed(self.student["backbone"], images, masks=crop_masks)
        else:
            outputs = self.student["backbone"].forward_features(images, masks=crop_masks)
        class_tokens = torch.cat([out.cls_token for out in outputs])
        student_logits = self.student["dino_head"](class_tokens)
        per_crop = list(student_logits.chunk(class_tokens.shape[0] // crops.batch_size))

        losses: dict[str, Tensor] = {"dino": self.dino_loss(per_crop, teacher.cls_probs)}
        total = config.dino_weight * losses["dino"]
        if self.ibot_loss is not None and teacher.patch_probs is not None:
            student_patches = self._ibot_head(self.student)(outputs[0].patch_tokens[masks])
            weights = masks_weight(masks)
            losses["ibot"] = self.ibot_loss.forward_masked(student_patches, teacher.patch_probs, weights)
            if distributed.is_distributed():
                losses["ibot"] = losses["ibot"] * _global_ibot_scale(weights.sum())
            total = total + config.ibot_weight * losses["ibot"]
        if self.koleo_loss is not None:
            # KoLeo on the pre-head class tokens of each global crop (DINOv2 Sec. 3); the loss normalises.
            global_tokens = outputs[0].cls_token.chunk(2)
            losses["koleo"] = sum(self.koleo_loss(tokens) for tokens in global_tokens) / 2
            total = total + config.koleo_weight * losses["koleo"]
        losses["total"] = total
        return SSLStepOutput(losses, teacher, outputs[0].cls_token.detach())

    @torch.no_grad()
    def update_centers(self, step: SSLStepOutput) -> None:
        """Move the softmax centres towards this batch's teacher logits (DINO Eq. 4; no-op for Sinkhorn)."""
        if self.config.loss.centering != "softmax":
            return
        self.dino_loss.update_center(step.teacher.cls_logits)
        if self.ibot_loss is not None and step.teacher.patch_logits is not None:
            self.ibot_loss.update_center(step.teacher.patch_logits)
