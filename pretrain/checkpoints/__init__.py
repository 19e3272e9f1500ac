"""Load, save and convert backbone checkpoints: released torch-hub, Hugging Face and dinolab formats.

Example::

    model = load_backbone("dinov2_vits14_pretrain.pth")         # released weights, eval mode
    save_backbone(model, "vits14_hf", fmt="hf")                 # transformers.AutoModel loads this
    model = load_backbone("vits14_hf", interpolation="hf")     # outputs equal transformers' at any size

Accepted sources: a released ``.pth`` (flat, chunked blocks, or a training checkpoint with a
``teacher``), a dinolab pretraining checkpoint (``{"dinolab": {"arch": ...}, "teacher": ...}``), a dinolab
``.safetensors`` file (config in its metadata), a Hugging Face model directory, or an architecture name
(``dinov2_vitb14_reg``, ``vit_small``: random weights). Loading is strict: every backbone weight must be
present with the right shape and nothing else may be left over.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from dinolab.pretrain.checkpoints.hf_layout import from_hf_state, is_hf_directory, read_hf_directory, write_hf_directory
from dinolab.pretrain.checkpoints.hub_layout import backbone_state
from dinolab.pretrain.checkpoints.infer import config_from_name, infer_config
from dinolab.pretrain.checkpoints.safe_io import (
    CheckpointError,
    atomic_write,
    read_safetensors_file,
    read_torch_file,
    sniff_format,
    write_safetensors_file,
    write_torch_state,
)
from dinolab.pretrain.models import ViTConfig, VisionTransformer

SaveFormat = Literal["hub", "hf", "safetensors"]
SAVE_FORMATS: tuple[str, ...] = ("hub", "hf", "safetensors")
DINOLAB_METADATA_KEY = "dinolab"

__all__ = [
    "SAVE_FORMATS",
    "CheckpointError",
    "load_backbone",
    "read_backbone",
    "save_backbone",
]


def _arch_from_metadata(entry: Any, source: str) -> ViTConfig:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("arch"), Mapping):
        raise CheckpointError(f"{source}: dinolab metadata without an 'arch' entry")
    try:
        return ViTConfig.from_dict(dict(entry["arch"]))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: invalid dinolab architecture ({error})") from error


def _read_safetensors(path: Path, num_heads: int | None) -> tuple[ViTConfig, dict[str, Tensor]]:
    tensors, metadata = read_safetensors_file(path)
    if any(key.startswith(("embeddings.", "encoder.layer.")) for key in tensors):
        raise CheckpointError(
            f"{path}: Hugging Face weights without their config; load the model directory instead"
        )
    if DINOLAB_METADATA_KEY in metadata:
        try:
            entry = json.loads(metadata[DINOLAB_METADATA_KEY])
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{path}: unreadable dinolab metadata ({error})") from error
        return _arch_from_metadata(entry, str(path)), backbone_state(tensors, str(path))
    state = backbone_state(tensors, str(path))
    return infer_config(state, num_heads, str(path)), state


def _read_torch(path: Path, num_heads: int | None) -> tuple[ViTConfig, dict[str, Tensor]]:
    obj = read_torch_file(path)
    if isinstance(obj, Mapping) and DINOLAB_METADATA_KEY in obj:  # dinolab training checkpoint
        return _arch_from_metadata(obj[DINOLAB_METADATA_KEY], str(path)), backbone_state(obj, str(path))
    state = backbone_state(obj, str(path))
    if any(key.startswith(("embeddings.", "encoder.layer.")) for key in state):
        raise CheckpointError(
            f"{path}: Hugging Face weights without their config; load the model directory instead"
        )
    return infer_config(state, num_heads, str(path)), state


def read_backbone(source: str | Path, num_heads: int | None = None) -> tuple[ViTConfig, dict[str, Tensor] | None]:
    """Architecture and dinolab-named weights of any supported source (weights ``None`` for a name).

    ``num_heads`` is needed only for released-layout files of non-released widths (the head count is
    not in the weights; the default is the released rule ``embed_dim // 64``).
    """
    path = Path(source)
    if path.is_dir():
        if not is_hf_directory(path):
            raise CheckpointError(f"{path}: a directory but not a Hugging Face model directory (no config.json)")
        config, hf_weights = read_hf_directory(path)
        state: dict[str, Tensor] | None = from_hf_state(hf_weights, config, str(path))
    elif path.is_file():
        kind = sniff_format(path)
        if kind == "safetensors":
            config, state = _read_safetensors(path, num_heads)
        elif kind == "torch":
            config, state = _read_torch(path, num_heads)
        else:
            raise CheckpointError(f"{path}: not a checkpoint (neither a PyTorch nor a safetensors file)")
    elif path.exists():
        raise CheckpointError(f"{path}: neither a file nor a directory")
    else:
        try:
            config, state = config_from_name(str(source)), None
        except CheckpointError as error:
            raise CheckpointError(
                f"{source}: no such file or directory, and not an architecture name. {error}"
            ) from error
    if num_heads is not None and num_heads != config.num_heads:
        raise CheckpointError(f"{source}: stores {config.num_heads} attention heads, not {num_heads}")
    return config, state


def _check_state(model: VisionTransformer, state: Mapping[str, Tensor], source: str) -> None:
    """Strict key and shape check with messages that name the offending weights."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing weights {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected weights {_short(unexpected)}")
    wrong = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
             for k in sorted(set(expected) & set(state)) if tuple(state[k].shape) != expected[k]]
    if wrong:
        problems.append(f"wrong shapes {_short(wrong)}")
    if problems:
        raise CheckpointError(f"{source}: does not fit the backbone: " + "; ".join(problems))


def _short(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def load_backbone(
    source: str | Path,
    interpolation: str | None = None,
    device: torch.device | str | None = None,
    num_heads: int | None = None,
) -> VisionTransformer:
    """A :class:`VisionTransformer` in eval mode from a checkpoint file, HF directory or architecture name.

    ``interpolation`` selects the position-embedding rule: ``"released"`` (the released code's rule for
    the variant), ``"hf"`` (transformers' rule, to reproduce its outputs at non-native sizes) or a rule
    name of :mod:`pretrain.models.pos_embed`; ``None`` keeps the file's stored choice (default
    ``"released"``). The model carries its preprocessing in ``model.preprocessing``.
    """
    config, state = read_backbone(source, num_heads)
    if state is None:
        model = VisionTransformer(config)
    else:
        with torch.device("meta"):  # no random initialisation of weights that are overwritten anyway
            model = VisionTransformer(config)
        _check_state(model, state, str(source))
        fp32 = {key: value.float() if value.is_floating_point() else value for key, value in state.items()}
        model.load_state_dict(fp32, strict=True, assign=True)
    if interpolation is not None:
        model.with_interpolation(interpolation)
    if device is not None:
        model.to(device)
    return model.eval()


def _dinolab_metadata(config: ViTConfig) -> dict[str, str]:
    entry = {"kind": "backbone", "arch": config.to_dict()}
    return {"format": "pt", DINOLAB_METADATA_KEY: json.dumps(entry)}


def save_backbone(
    model: VisionTransformer, path: str | Path, fmt: SaveFormat = "safetensors", overwrite: bool = False
) -> Path:
    """Write ``model``'s weights as ``fmt``; returns the written path.

    - ``"hub"``: a flat ``.pth`` state dict in the released layout (the release's code loads it with
      ``strict=True``); the head count is not stored (released rule: ``embed_dim // 64``).
    - ``"hf"``: a directory for ``transformers.AutoModel.from_pretrained`` (config.json,
      preprocessor_config.json, model.safetensors).
    - ``"safetensors"``: one file with the full dinolab config in its metadata.

    An existing ``path`` is refused unless ``overwrite``; writes are staged, so failures lose nothing.
    """
    path = Path(path)
    state = model.state_dict()
    if fmt == "hub":
        write_torch_state(state, path, overwrite)
    elif fmt == "hf":
        atomic_write(path, lambda target: write_hf_directory(state, model.config, target), overwrite)
    elif fmt == "safetensors":
        metadata = _dinolab_metadata(model.config)
        atomic_write(path, lambda target: write_safetensors_file(state, target, metadata), overwrite)
    else:
        raise ValueError(f"unknown checkpoint format {fmt!r}; choose one of {SAVE_FORMATS}")
    return path
