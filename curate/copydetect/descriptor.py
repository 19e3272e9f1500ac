"""The SSCD copy descriptor: torchvision ResNet trunk, GeM pooling (p = 3), linear projection, L2 norm.

Architecture and checkpoint layout of facebookresearch/sscd-copy-detection (Pizzi et al. 2022): its
torchvision models are ``resnet50(num_classes=512)`` whose ``avgpool`` is replaced by GeM, so ``fc`` is the
projection to 512 and a state dict has torchvision's keys (``conv1.weight``, ``layer1.0.conv1.weight``,
..., ``fc.weight`` [512, 2048]), optionally under a ``backbone.`` or ``model.`` prefix. TorchScript files
run code from the file: :func:`load_descriptor` refuses them unless ``allow_torchscript=True``. Inference
resizes the short side to 288 (the paper's setting); PCA-whitening learned on a sample is optional::

    model = load_descriptor("sscd_disc_mixup.torchvision.pt")
    vectors = describe_images(model, images)                 # [n, 512], unit norm
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import Tensor, nn

SHORT_SIDE = 288
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PREFIXES = ("backbone.", "model.", "module.")


class CheckpointError(ValueError):
    """A copy-descriptor file this code cannot (or will not) load; the message says why."""


class GeM(nn.Module):
    """Generalised mean pooling: (mean over positions of x^p)^(1/p), x clamped to >= eps (fixed p, as SSCD)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p, self.eps = p, eps

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)


class SSCD(nn.Module):
    """``trunk -> GeM -> fc -> L2``; the trunk is any torchvision ResNet (``resnet50`` for released weights)."""

    def __init__(self, arch: str = "resnet50", dim: int = 512, p: float = 3.0) -> None:
        super().__init__()
        self.arch, self.dim = arch, dim
        self.backbone = getattr(torchvision.models, arch)(num_classes=dim, zero_init_residual=True)
        self.backbone.avgpool = GeM(p)

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.backbone(images), dim=-1)


def _strip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    for prefix in PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            return _strip({key[len(prefix):]: value for key, value in state.items()})
    return state


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def load_descriptor(path: str | Path, allow_torchscript: bool = False, arch: str | None = None) -> nn.Module:
    """An SSCD-architecture model from a torchvision-layout state dict (or a ``train-copy-detector`` checkpoint).

    The trunk is read from the checkpoint (``arch`` key of ours; otherwise ``resnet50``, or ``arch``); the
    projection size from ``fc.weight``. Missing or unexpected keys raise :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no copy-descriptor file {str(path)!r}")
    if _is_torchscript(path):
        if not allow_torchscript:
            raise CheckpointError(f"{path} is TorchScript (it runs code from the file); pass "
                                  "dedup.allow_torchscript=true to accept it, or use the torchvision state dict")
        model = torch.jit.load(str(path), map_location="cpu")
        model.eval()
        return model
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and "model" in loaded and isinstance(loaded["model"], dict):
        arch = arch or loaded.get("arch")
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or "fc.weight" not in _strip(loaded):
        raise CheckpointError(f"{path}: not an SSCD torchvision state dict (no fc.weight)")
    state = _strip(loaded)
    model = SSCD(arch or "resnet50", dim=int(state["fc.weight"].shape[0]))
    missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: layout differs from torchvision {model.arch} "
                              f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    model.eval()
    return model


def preprocess(image: Image.Image, short_side: int = SHORT_SIDE) -> Tensor:
    """RGB, short side resized to ``short_side`` (aspect kept, no crop), ImageNet-normalised ``[3, H, W]``."""
    image = image.convert("RGB")
    scale = short_side / min(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.BILINEAR)
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (array - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


@torch.inference_mode()
def describe_images(model: nn.Module, images: Sequence[Image.Image], short_side: int = SHORT_SIDE) -> np.ndarray:
    """``[n, dim]`` unit-norm descriptors, one image at a time (sizes differ: fixed short side, any aspect)."""
    out = [F.normalize(model(preprocess(image, short_side)[None]).float(), dim=-1)[0].numpy() for image in images]
    return np.stack(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


@dataclass
class Whitening:
    """PCA-whitening (faiss ``PCAW<d>,L2norm``) learned on a sample of descriptors."""

    mean: np.ndarray
    projection: np.ndarray

    @classmethod
    def fit(cls, sample: np.ndarray, dim: int | None = None, eps: float = 1e-6) -> "Whitening":
        mean = sample.mean(axis=0)
        centred = sample - mean
        values, vectors = np.linalg.eigh(centred.T @ centred / max(1, len(sample) - 1))
        order = np.argsort(values)[::-1][: dim or sample.shape[1]]
        return cls(mean.astype(np.float32), (vectors[:, order] / np.sqrt(values[order] + eps)).astype(np.float32))

    @classmethod
    def fit_sample(cls, vectors: np.ndarray, size: int, seed: int = 0) -> "Whitening":
        """Learned on ``size`` rows of ``vectors`` drawn with ``seed`` (all of them when fewer); at most
        ``rows - 1`` output dimensions, the rank a sample can support."""
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.permutation(len(vectors))[:size])
        return cls.fit(np.asarray(vectors[rows], np.float64), dim=min(vectors.shape[1], max(1, len(rows) - 1)))

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        out = (vectors - self.mean) @ self.projection
        return (out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-12)).astype(np.float32)
