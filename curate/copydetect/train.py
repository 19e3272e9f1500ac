"""Our copy-descriptor recipe (SSCD's, self-supervised on any lake), resumable; its output loads as ``dedup.descriptor``.

Each step takes a batch of lake images, makes two strongly augmented views of each (:class:`.augment.SSCDAugment`:
crops, flips, rotations, text and emoji overlays, colour, grayscale, blur, JPEG), mixes a few views
(mixup / cutmix, :func:`.augment.mix_batch`: a mixed view is a positive of both sources), and minimises

    InfoNCE(τ) over the 2B views (the other view of an image, and mixed partners, are the positives)
    + λ · entropy term: −mean log distance of each descriptor to its nearest non-matching one (KoLeo-style)

with the SSCD architecture on any torchvision ResNet trunk (``resnet18`` for CPU, ``resnet50`` as released).
Departures from the paper, for one machine: AdamW instead of LARS (batch 4096 is out of reach), short
runs, smaller views. Every random draw of step ``s`` comes from a generator seeded by (seed, s), so a run
killed and resumed from its checkpoint reaches the same weights as an uninterrupted one::

    trainer = CopyDetectorTrainer(images, Path("copy-detector"), CopyTrainConfig(arch="resnet18", steps=2000))
    trainer.run()           # OUT/checkpoint.pth, then: curate run ... dedup.descriptor=OUT/checkpoint.pth
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dinolab.curate.copydetect.augment import SSCDAugment, mix_batch
from dinolab.curate.copydetect.descriptor import MEAN, STD, SSCD

CHECKPOINT = "checkpoint.pth"
LOG = "log.jsonl"
FORMAT = "dinolab-copy-detector"


@dataclass(frozen=True)
class CopyTrainConfig:
    arch: str = "resnet18"
    """torchvision ResNet trunk (``resnet50`` is SSCD's)."""
    dim: int = 512
    size: int = 128
    """Side of each augmented view (SSCD trains at 224)."""
    batch_size: int = 32
    """Images per step (two views each)."""
    steps: int = 1000
    lr: float = 5e-4
    weight_decay: float = 1e-6
    warmup_steps: int = 50
    temperature: float = 0.05
    entropy_weight: float = 10.0
    """λ of the entropy term (SSCD: 30 in the paper, 10 recommended for new set-ups)."""
    mixup: float = 0.025
    cutmix: float = 0.025
    checkpoint_every: int = 100
    seed: int = 0


def positives(instances: np.ndarray, partners: np.ndarray) -> Tensor:
    """``[n, n]`` bool: row ``i``'s positives — views of its own image and, if mixed, of its partner's image."""
    same = instances[:, None] == instances[None, :]
    for row, partner in enumerate(partners):
        if partner >= 0:
            mixed = instances == instances[partner]
            same[row] |= mixed
            same[:, row] |= mixed
    np.fill_diagonal(same, False)
    return torch.from_numpy(same)


def info_nce(descriptors: Tensor, positive: Tensor, temperature: float) -> Tensor:
    """Contrastive loss with several positives: per row, −mean over its positives of their log-softmax
    among all other rows (the row itself excluded)."""
    logits = descriptors @ descriptors.T / temperature
    eye = torch.eye(len(descriptors), dtype=torch.bool, device=descriptors.device)
    log_prob = logits.masked_fill(eye, float("-inf")).log_softmax(dim=1)
    positive = positive.to(descriptors.device)
    per_row = -(log_prob.masked_fill(~positive, 0.0).sum(dim=1)) / positive.sum(dim=1).clamp(min=1)
    return per_row[positive.any(dim=1)].mean()


def entropy_loss(descriptors: Tensor, positive: Tensor, eps: float = 1e-8) -> Tensor:
    """SSCD's differential-entropy regulariser: −mean log distance to the nearest non-matching descriptor."""
    distances = torch.cdist(descriptors, descriptors)
    blocked = positive.to(descriptors.device) | torch.eye(len(descriptors), dtype=torch.bool, device=descriptors.device)
    nearest = distances.masked_fill(blocked, float("inf")).min(dim=1).values
    return -torch.log(nearest + eps).mean()


def learning_rate(config: CopyTrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to zero at ``steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _normalise(views: Tensor) -> Tensor:
    return (views - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


class CopyDetectorTrainer:
    """One training run over ``images`` (decoded PIL images) into ``out``; resumes from ``OUT/checkpoint.pth``."""

    def __init__(self, images: Sequence[Image.Image], out: Path, config: CopyTrainConfig = CopyTrainConfig(),
                 resume: bool = False, say: Callable[[str], None] = print) -> None:
        if len(images) < 2:
            raise ValueError(f"training a copy detector needs at least 2 images, got {len(images)}")
        self.images, self.out, self.config, self.say = images, Path(out), config, say
        self.batch = min(config.batch_size, len(images))
        torch.manual_seed(config.seed)
        self.model = SSCD(config.arch, dim=config.dim)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.augment = SSCDAugment(size=config.size)
        self.step = 0
        path = self.out / CHECKPOINT
        if resume and path.is_file():
            self._load(path)
        elif path.is_file():
            raise FileExistsError(f"{path} exists: pass --resume to continue it, or choose another --out")

    def batch_images(self, step: int) -> np.ndarray:
        """Indices of step ``step``'s images: a permutation per epoch fixed by (seed, epoch)."""
        per_epoch = len(self.images) // self.batch
        epoch, position = divmod(step, per_epoch)
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.images))
        return order[position * self.batch : (position + 1) * self.batch]

    def views(self, step: int) -> tuple[Tensor, Tensor]:
        """The step's 2B normalised views and their positive mask (all draws from the (seed, step) generator)."""
        rng = np.random.default_rng([self.config.seed, 1_000_003, step])
        chosen = self.batch_images(step)
        views = torch.stack([self.augment(self.images[i], rng) for _ in range(2) for i in chosen])
        views, partners = mix_batch(views, rng, self.config.mixup, self.config.cutmix)
        instances = np.tile(np.arange(len(chosen)), 2)
        return _normalise(views), positives(instances, partners)

    def train_step(self, step: int) -> dict[str, float]:
        views, positive = self.views(step)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, step)
        descriptors = self.model(views)
        contrastive = info_nce(descriptors, positive, self.config.temperature)
        entropy = entropy_loss(descriptors, positive)
        loss = contrastive + self.config.entropy_weight * entropy
        if not torch.isfinite(loss):
            raise FloatingPointError(f"copy-detector loss is {loss.item()} at step {step}; lower the lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "info_nce": contrastive.item(), "entropy": entropy.item(),
                "lr": self.optimizer.param_groups[0]["lr"]}

    def run(self) -> Path:
        """Train to ``config.steps`` (checkpointing every ``checkpoint_every``); returns the checkpoint path."""
        self.model.train()
        self.out.mkdir(parents=True, exist_ok=True)
        started, report_every = time.perf_counter(), max(1, self.config.steps // 20)
        with open(self.out / LOG, "a") as log:
            while self.step < self.config.steps:
                values = self.train_step(self.step)
                self.step += 1
                log.write(json.dumps({"step": self.step, **values}) + "\n")
                if self.step % report_every == 0 or self.step == self.config.steps:
                    rate = self.batch * 2 * self.step / max(time.perf_counter() - started, 1e-9)
                    self.say(f"copy detector step {self.step}/{self.config.steps}: loss {values['loss']:.3f} "
                             f"(InfoNCE {values['info_nce']:.3f}, entropy {values['entropy']:.3f}), {rate:.0f} views/s")
                if self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps:
                    log.flush()
                    self.save()
        self.model.eval()
        return self.out / CHECKPOINT

    def save(self) -> None:
        """Atomically write the checkpoint: weights in torchvision layout (``model``) + what resuming needs."""
        state = {"format": FORMAT, "arch": self.config.arch, "model": self.model.backbone.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "step": self.step, "config": asdict(self.config)}
        path = self.out / CHECKPOINT
        temporary = path.with_name(f".{path.name}.tmp")
        torch.save(state, temporary)
        os.replace(temporary, path)

    def _load(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != FORMAT:
            raise ValueError(f"{path}: not a copy-detector training checkpoint")
        free = {"steps": self.config.steps, "checkpoint_every": self.config.checkpoint_every}  # may change on resume
        if {**state["config"], **free} != {**asdict(self.config), **free}:
            raise ValueError(f"{path}: written with another configuration ({state['config']}); use another --out")
        self.model.backbone.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.say(f"resuming the copy detector at step {self.step}")


def load_lake_images(uris: Sequence[str], side: int, storage_options: dict | None = None,
                     max_pixels: int | None = None) -> tuple[list[Image.Image], int]:
    """Decode ``uris`` with the ingest stage's decoder, short side shrunk to ``side``; (images, skipped count)."""
    from dinolab.curate.lakes import read_partition
    from dinolab.pretrain.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image

    images, skipped, max_pixels = [], 0, max_pixels or DEFAULT_MAX_PIXELS
    for uri, data in read_partition(list(uris), storage_options):
        if isinstance(data, BaseException):
            skipped += 1
            continue
        try:
            image = decode_image(data, uri, max_side=4 * side, max_pixels=max_pixels, min_side=1).image.convert("RGB")
        except ImageDecodeError:
            skipped += 1
            continue
        scale = side / min(image.size)
        if scale < 1:
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.BILINEAR)
        images.append(image)
    return images, skipped
