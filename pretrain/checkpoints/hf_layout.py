"""The Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` layout ↔ dinolab names.

A Hugging Face model directory holds ``config.json`` and ``model.safetensors`` (or shards, or
``pytorch_model.bin``). On disk the weights use the names below (transformers renames q/k/v and the
SwiGLU halves when it loads them; newer saves with those runtime names are accepted too):

=====================================================  =========================================
Hugging Face                                           dinolab / released hub
=====================================================  =========================================
``embeddings.cls_token`` / ``mask_token`` /            ``cls_token`` / ``mask_token`` /
``register_tokens`` / ``position_embeddings``          ``register_tokens`` / ``pos_embed``
``embeddings.patch_embeddings.projection.*``           ``patch_embed.proj.*``
``encoder.layer.{i}.attention.attention.query|key|value.*``  ``blocks.{i}.attn.qkv.*`` (rows q | k | v)
``encoder.layer.{i}.attention.output.dense.*``         ``blocks.{i}.attn.proj.*``
``encoder.layer.{i}.layer_scale1|2.lambda1``           ``blocks.{i}.ls1|2.gamma``
``encoder.layer.{i}.mlp.fc1|fc2.*``                    ``blocks.{i}.mlp.fc1|fc2.*``
``encoder.layer.{i}.mlp.weights_in|weights_out.*``     ``blocks.{i}.mlp.w12|w3.*`` (SwiGLU)
``encoder.layer.{i}.norm1|norm2.*``, ``layernorm.*``   ``blocks.{i}.norm1|norm2.*``, ``norm.*``
=====================================================  =========================================

``config.json`` is written by hand (transformers is not needed to save) with the fields transformers
5.x reads, plus a ``dinolab_arch`` entry (the full :class:`ViTConfig`) that transformers keeps and ignores.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dinolab.pretrain.checkpoints.safe_io import (
    CheckpointError,
    read_json_file,
    read_safetensors_file,
    read_torch_file,
    write_safetensors_file,
)
from dinolab.pretrain.models import Preprocessing, ViTConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SHARD_INDEX_FILE = "model.safetensors.index.json"
PYTORCH_WEIGHTS_FILE = "pytorch_model.bin"
PREPROCESSOR_FILE = "preprocessor_config.json"
DINOLAB_CONFIG_KEY = "dinolab_arch"
MODEL_TYPES = {"dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel"}
HF_LAYER_NORM_EPS = 1e-6
BICUBIC_PIL_CODE = 3  # PIL.Image.BICUBIC, as stored in preprocessor_config.json

_TOP_LEVEL = {  # dinolab name → HF name
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "register_tokens": "embeddings.register_tokens",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_IN_BLOCK = {  # dinolab name inside blocks.{i}. → HF name inside encoder.layer.{i}.
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj": "attention.output.dense",
    "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.w12": "mlp.weights_in",
    "mlp.w3": "mlp.weights_out",
}
_QKV_PARTS = ("query", "key", "value")
_RUNTIME_NAMES = {  # transformers' in-memory names (5.x) → on-disk names
    "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense",
    "mlp.down_proj": "mlp.weights_out",
}
_HF_BLOCK = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HUB_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


# ------------------------------------------------------------------ weights
def to_hf_state(state: Mapping[str, Tensor], config: ViTConfig) -> dict[str, Tensor]:
    """dinolab/hub weights → HF on-disk weights. Missing LayerScale (``layerscale_init=None``) → ones."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in _TOP_LEVEL:
            out[_TOP_LEVEL[key]] = value
            continue
        match = _HUB_BLOCK.match(key)
        if not match:
            raise CheckpointError(f"no Hugging Face name for weight {key!r}")
        index, rest = match.groups()
        prefix = f"encoder.layer.{index}."
        module, _, param = rest.rpartition(".")
        if module == "attn.qkv":
            for part, chunk in zip(_QKV_PARTS, value.chunk(3, dim=0)):
                out[f"{prefix}attention.attention.{part}.{param}"] = chunk
        elif rest in _IN_BLOCK:  # ls1.gamma / ls2.gamma
            out[prefix + _IN_BLOCK[rest]] = value
        elif module in _IN_BLOCK:
            out[f"{prefix}{_IN_BLOCK[module]}.{param}"] = value
        else:
            raise CheckpointError(f"no Hugging Face name for weight {key!r}")
    if config.layerscale_init is None:  # transformers always has LayerScale: identity gammas
        for index in range(config.depth):
            for which in (1, 2):
                out[f"encoder.layer.{index}.layer_scale{which}.lambda1"] = torch.ones(config.embed_dim)
    return out


def _to_disk_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Undo transformers' runtime renames (q_proj..., gate_proj/up_proj) and model-class prefixes."""
    prefixed = [p for p in ("dinov2.", "dinov2_with_registers.") if any(k.startswith(p) for k in state)]
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if prefixed:  # e.g. Dinov2ForImageClassification: drop the classifier, keep the backbone
            if key.startswith("classifier."):
                continue
            key = key[len(prefixed[0]):] if key.startswith(prefixed[0]) else key
        for runtime, disk in _RUNTIME_NAMES.items():
            key = key.replace(f".{runtime}.", f".{disk}.")
        out[key] = value
    for key in [k for k in out if ".mlp.gate_proj." in k]:
        up_key = key.replace(".mlp.gate_proj.", ".mlp.up_proj.")
        if up_key not in out:
            raise CheckpointError(f"{key!r} has no matching {up_key!r}")
        fused = torch.cat([out.pop(key), out.pop(up_key)], dim=0)  # silu(gate) * up = w12 halves
        out[key.replace(".mlp.gate_proj.", ".mlp.weights_in.")] = fused
    return out


def from_hf_state(hf_state: Mapping[str, Tensor], config: ViTConfig, source: str = "checkpoint") -> dict[str, Tensor]:
    """HF weights (on-disk or runtime names) → dinolab/hub weights for ``config``.

    Unknown names are errors. Identity LayerScale gammas are dropped when ``config`` has no LayerScale;
    a missing mask token (``use_mask_token=false``) becomes zeros, the value it is initialised to.
    """
    hf_to_top = {hf: ours for ours, hf in _TOP_LEVEL.items()}
    hf_to_block = {hf: ours for ours, hf in _IN_BLOCK.items()}
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    unknown: list[str] = []
    for key, value in _to_disk_names(hf_state).items():
        if key in hf_to_top:
            out[hf_to_top[key]] = value
            continue
        match = _HF_BLOCK.match(key)
        if not match:
            unknown.append(key)
            continue
        index, rest = match.groups()
        module, _, param = rest.rpartition(".")
        if module.startswith("attention.attention.") and module.rsplit(".", 1)[1] in _QKV_PARTS:
            qkv.setdefault((index, param), {})[module.rsplit(".", 1)[1]] = value
        elif rest in hf_to_block:
            if config.layerscale_init is None:
                if not torch.all(value == 1):
                    raise CheckpointError(f"{source}: {key} is not identity but the config has no LayerScale")
                continue
            out[f"blocks.{index}.{hf_to_block[rest]}"] = value
        elif module in hf_to_block:
            out[f"blocks.{index}.{hf_to_block[module]}.{param}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: unexpected Hugging Face weights {_short_list(unknown)}")
    for (index, param), parts in qkv.items():
        if set(parts) != set(_QKV_PARTS):
            missing = sorted(set(_QKV_PARTS) - set(parts))
            raise CheckpointError(f"{source}: layer {index} lacks attention {param} weights for {missing}")
        out[f"blocks.{index}.attn.qkv.{param}"] = torch.cat([parts[p] for p in _QKV_PARTS], dim=0)
    if "mask_token" not in out:
        out["mask_token"] = torch.zeros(1, config.embed_dim)
    return out


def _short_list(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")


# ------------------------------------------------------------------ config
def _integral(value: float, what: str) -> int:
    if float(value) != int(value):
        raise CheckpointError(f"transformers needs an integer {what}, this model has {value}")
    return int(value)


def hf_config_dict(config: ViTConfig) -> dict[str, Any]:
    """``config.json`` content for ``transformers.AutoModel`` (Dinov2Model or Dinov2WithRegistersModel)."""
    model_type = "dinov2_with_registers" if config.num_register_tokens else "dinov2"
    data: dict[str, Any] = {
        "architectures": [MODEL_TYPES[model_type]],
        "model_type": model_type,
        "hidden_size": config.embed_dim,
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.num_heads,
        "mlp_ratio": _integral(config.mlp_ratio, "mlp_ratio"),
        "use_swiglu_ffn": config.ffn == "swiglu",
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "drop_path_rate": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": HF_LAYER_NORM_EPS,
        "layerscale_value": 1.0 if config.layerscale_init is None else float(config.layerscale_init),
        "image_size": config.img_size,
        "patch_size": config.patch_size,
        "num_channels": config.in_chans,
        "qkv_bias": True,
        "apply_layernorm": True,
        "reshape_hidden_states": True,
        DINOLAB_CONFIG_KEY: config.to_dict(),
    }
    if config.num_register_tokens:
        data["num_register_tokens"] = config.num_register_tokens
    else:
        data["use_mask_token"] = True
    return data


def _square(value: Any, what: str, source: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise CheckpointError(f"{source}: non-square {what} {value} is not supported")
        value = value[0]
    return int(value)


def config_from_hf(data: Mapping[str, Any], preprocessing: Preprocessing | None = None,
                   source: str = "config.json") -> ViTConfig:
    """A :class:`ViTConfig` from an HF ``config.json`` (defaults as in transformers 5.x when absent).

    A ``dinolab_arch`` entry that agrees with the HF fields supplies what HF cannot express
    (no LayerScale, interpolation choice, preprocessing).
    """
    model_type = data.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{source}: model_type {model_type!r} is not one of {sorted(MODEL_TYPES)}")
    if float(data.get("layer_norm_eps", HF_LAYER_NORM_EPS)) != HF_LAYER_NORM_EPS:
        raise CheckpointError(f"{source}: layer_norm_eps {data['layer_norm_eps']} is not supported (only 1e-6)")
    if not data.get("qkv_bias", True):
        raise CheckpointError(f"{source}: qkv_bias=false is not supported")
    swiglu = bool(data.get("use_swiglu_ffn", False))
    if not swiglu and data.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{source}: hidden_act {data['hidden_act']!r} is not supported (only gelu)")
    registers = int(data.get("num_register_tokens", 4)) if model_type == "dinov2_with_registers" else 0
    config = ViTConfig(
        embed_dim=int(data.get("hidden_size", 768)),
        depth=int(data.get("num_hidden_layers", 12)),
        num_heads=int(data.get("num_attention_heads", 12)),
        patch_size=_square(data.get("patch_size", 14 if model_type == "dinov2" else 16), "patch_size", source),
        img_size=_square(data.get("image_size", 224), "image_size", source),
        in_chans=int(data.get("num_channels", 3)),
        num_register_tokens=registers,
        ffn="swiglu" if swiglu else "mlp",
        mlp_ratio=float(data.get("mlp_ratio", 4)),
        layerscale_init=float(data.get("layerscale_value", 1.0)),
        preprocessing=preprocessing or Preprocessing(),
    )
    stored = data.get(DINOLAB_CONFIG_KEY)
    if isinstance(stored, Mapping):
        try:
            ours = ViTConfig.from_dict(dict(stored))
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{source}: invalid {DINOLAB_CONFIG_KEY} entry ({error})") from error
        structural = ("embed_dim", "depth", "num_heads", "patch_size", "img_size", "in_chans",
                      "num_register_tokens", "ffn", "mlp_ratio")
        if all(getattr(ours, f) == getattr(config, f) for f in structural):
            return ours
    return config


def preprocessing_from_hf(data: Mapping[str, Any]) -> Preprocessing:
    """Evaluation preprocessing from an HF ``preprocessor_config.json`` (BitImageProcessor fields)."""
    default = Preprocessing()
    size = data.get("size") or {}
    crop = data.get("crop_size") or {}
    return replace(
        default,
        resize_size=int(size.get("shortest_edge", default.resize_size)),
        input_size=int(crop.get("height", default.input_size)),
        mean=tuple(float(v) for v in data.get("image_mean", default.mean)),
        std=tuple(float(v) for v in data.get("image_std", default.std)),
    )


def preprocessor_config_dict(preprocessing: Preprocessing) -> dict[str, Any]:
    """``preprocessor_config.json`` for ``transformers.AutoImageProcessor`` (resize, crop, normalise)."""
    return {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": preprocessing.resize_size},
        "resample": BICUBIC_PIL_CODE,
        "do_center_crop": True,
        "crop_size": {"height": preprocessing.input_size, "width": preprocessing.input_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(preprocessing.mean),
        "image_std": list(preprocessing.std),
        "do_convert_rgb": True,
    }


# ------------------------------------------------------------------ directories
def is_hf_directory(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def read_hf_directory(path: Path) -> tuple[ViTConfig, dict[str, Tensor]]:
    """Config and HF-named weights of a Hugging Face model directory."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise CheckpointError(f"{path}: not a Hugging Face model directory (no {CONFIG_FILE})")
    preprocessing = None
    if (path / PREPROCESSOR_FILE).is_file():
        preprocessing = preprocessing_from_hf(read_json_file(path / PREPROCESSOR_FILE))
    config = config_from_hf(read_json_file(path / CONFIG_FILE), preprocessing, str(path / CONFIG_FILE))
    if (path / WEIGHTS_FILE).is_file():
        weights, _ = read_safetensors_file(path / WEIGHTS_FILE)
    elif (path / SHARD_INDEX_FILE).is_file():
        weight_map = read_json_file(path / SHARD_INDEX_FILE).get("weight_map", {})
        weights = {}
        for shard in sorted(set(weight_map.values())):
            weights.update(read_safetensors_file(path / shard)[0])
    elif (path / PYTORCH_WEIGHTS_FILE).is_file():
        loaded = read_torch_file(path / PYTORCH_WEIGHTS_FILE)
        if not isinstance(loaded, Mapping):
            raise CheckpointError(f"{path / PYTORCH_WEIGHTS_FILE}: not a state dict")
        weights = {k: v for k, v in loaded.items() if isinstance(v, Tensor)}
    else:
        raise CheckpointError(f"{path}: no {WEIGHTS_FILE}, {SHARD_INDEX_FILE} or {PYTORCH_WEIGHTS_FILE}")
    return config, weights


def write_hf_directory(state: Mapping[str, Tensor], config: ViTConfig, directory: Path) -> None:
    """Write ``config.json``, ``preprocessor_config.json`` and ``model.safetensors`` into a new directory."""
    directory = Path(directory)
    directory.mkdir(parents=True)
    hf_config = hf_config_dict(config)
    (directory / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (directory / PREPROCESSOR_FILE).write_text(
        json.dumps(preprocessor_config_dict(config.preprocessing), indent=2) + "\n", encoding="utf-8"
    )
    write_safetensors_file(to_hf_state(state, config), directory / WEIGHTS_FILE, metadata={"format": "pt"})
