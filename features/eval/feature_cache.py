"""Frozen features for evaluation, extracted once and cached on disk.

:func:`extract_eval_features` runs the backbone over batches and keeps, per image, the class token of
each of the last ``num_blocks`` blocks (normed; the last one is the model's output CLS) and the mean
of the last block's normed patch tokens — everything the k-NN, linear and logistic protocols need.

:class:`FeatureCache` stores them as safetensors under a key hashed from the model weights, the data
(source, split, file sizes and times) and the preprocessing, so a second run on the same inputs loads
them instead of running the model again.

Example::

    cache = FeatureCache(default_cache_dir())
    key = cache_key(model_fingerprint(model), {"source": "fashion-mnist", "split": "test"}, {"size": 28})
    features = cache.load(key) or cache.save(key, extract_eval_features(model, batches))
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

CACHE_FORMAT_VERSION = 1
CACHE_ENV_VAR = "DINOLAB_CACHE_DIR"


@dataclass
class EvalFeatures:
    """Per-image features: CLS of the last blocks ``[N, L, D]``, patch mean ``[N, D]``, labels ``[N]``."""

    cls_layers: Tensor
    patch_mean: Tensor | None
    labels: Tensor
    names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason) of unreadable images

    @property
    def cls(self) -> Tensor:
        """The model's output class token ``[N, D]`` (last block, normed)."""
        return self.cls_layers[:, -1]

    def __len__(self) -> int:
        return len(self.names)


def _batch_fields(batch: Any) -> tuple[Tensor, Tensor, list[str], list]:
    """``(images, labels, names, skipped)`` of a :class:`pretrain.data.samples.Batch`."""
    return batch.images, batch.labels, list(batch.names), list(getattr(batch, "skipped", []))


@torch.inference_mode()
def extract_eval_features(
    model: nn.Module,
    batches: Iterable,
    num_blocks: int = 4,
    device: torch.device | str | None = None,
    progress: bool = True,
    description: str = "features",
) -> EvalFeatures:
    """Run ``model`` over ``batches`` (``Batch`` objects: images, labels, names, skipped markers).

    Uses bf16 autocast on CUDA, fp32 elsewhere; outputs are stored as fp32 on the CPU.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval().to(device)
    num_blocks = min(num_blocks, len(model.blocks))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    cls_parts, mean_parts, label_parts, names, skipped = [], [], [], [], []
    total = getattr(batches, "num_images", None) or _dataset_length(batches)
    bar = tqdm(total=total, desc=description, unit="img", disable=not progress)
    for batch in batches:
        images, labels, batch_names, batch_skipped = _batch_fields(batch)
        skipped.extend((item.name, item.reason) for item in batch_skipped)
        bar.update(len(batch_names) + len(batch_skipped))
        if not batch_names:
            continue
        with autocast:
            layers = model.get_intermediate_layers(
                images.to(device, non_blocking=True), n=num_blocks, return_class_token=True, norm=True
            )
        cls_parts.append(torch.stack([cls for _, cls in layers], dim=1).float().cpu())
        mean_parts.append(layers[-1][0].float().mean(dim=1).cpu())
        label_parts.append(labels.long().cpu())
        names.extend(batch_names)
    bar.close()
    if not names:
        raise ValueError(f"no readable images ({len(skipped)} skipped)")
    return EvalFeatures(
        torch.cat(cls_parts), torch.cat(mean_parts), torch.cat(label_parts), names, skipped
    )


def _dataset_length(batches: Iterable) -> int | None:
    dataset = getattr(batches, "dataset", None)
    return len(dataset) if dataset is not None else None


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the architecture config and every tensor of the state dict (names, dtypes, bytes)."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        digest.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def file_stamp(path: str | Path) -> list:
    """``[name, size, mtime_ns]`` of a file: changes when the file is replaced or edited."""
    stat = Path(path).stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def cache_key(model_hash: str, data: dict[str, Any], preprocessing: dict[str, Any]) -> str:
    """Cache key from the model fingerprint, a JSON-able data description and the preprocessing."""
    payload = {
        "version": CACHE_FORMAT_VERSION,
        "model": model_hash,
        "data": data,
        "preprocessing": preprocessing,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def default_cache_dir() -> Path:
    """``$DINOLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/dinolab/features``, else ``~/.cache/dinolab/features``."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dinolab" / "features"


class FeatureCache:
    """A folder of ``<key>.safetensors`` files holding :class:`EvalFeatures`."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def load(self, key: str) -> EvalFeatures | None:
        """The cached features, or ``None`` when absent or unreadable (then they are re-extracted)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            names = json.loads(metadata["names"])
            skipped = [tuple(item) for item in json.loads(metadata.get("skipped", "[]"))]
            features = EvalFeatures(
                tensors["cls_layers"], tensors["patch_mean"], tensors["labels"], names, skipped
            )
        except (SafetensorError, OSError, KeyError, ValueError):
            return None
        if not (features.cls_layers.shape[0] == features.patch_mean.shape[0] == len(names)):
            return None
        return features

    def save(self, key: str, features: EvalFeatures) -> EvalFeatures:
        """Write atomically (temporary file, then rename); returns ``features``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        tensors = {
            "cls_layers": features.cls_layers.contiguous(),
            "patch_mean": features.patch_mean.contiguous(),
            "labels": features.labels.contiguous(),
        }
        metadata = {"names": json.dumps(features.names), "skipped": json.dumps(features.skipped)}
        save_file(tensors, str(temporary), metadata=metadata)
        os.replace(temporary, path)
        return features
