"""Optimiser parameter groups of the DINOv2 recipe (DINOv2 appendix, BEiT §2.6 layer-wise lr decay).

Each trainable parameter gets

* ``lr_multiplier``: layer-wise decay ``decay**(depth + 1 − layer_id)`` with layer id 0 for the patch
  embedding and tokens (cls, pos, registers, mask), ``i + 1`` for ``blocks.i`` and ``depth + 1`` for
  the final norm and the heads; the patch embedding is further multiplied by ``patch_embed_lr_mult``;
* ``wd_multiplier``: 0 for biases, norms, LayerScale gammas, every 1-D parameter and the learnt
  tokens, 1 otherwise (the released code still decays the tokens; this recipe does not);
* ``is_last_layer``: the head's prototype layer, whose lr is 0 while it is frozen.

Parameters sharing all three are fused into one group (few groups, fast ``_foreach`` optimiser).

Example::

    groups = build_param_groups({"backbone": vit, "dino_head": head}, layer_decay=0.9)
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999))
    apply_schedules(optimizer, lr=values["lr"], weight_decay=values["weight_decay"],
                    last_layer_lr=values["last_layer_lr"])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_TOKEN_NAMES = ("cls_token", "pos_embed", "register_tokens", "mask_token")


def _backbone_layer_id(name: str, depth: int) -> int:
    if name.startswith("patch_embed") or name.split(".")[0] in _TOKEN_NAMES:
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def _wd_multiplier(name: str, param: nn.Parameter) -> float:
    leaf = name.split(".")[-1]
    no_decay = (
        param.ndim <= 1
        or leaf == "bias"
        or "norm" in name
        or leaf == "gamma"
        or leaf in _TOKEN_NAMES
    )
    return 0.0 if no_decay else 1.0


def build_param_groups(
    model_parts: dict[str, nn.Module],
    layer_decay: float = 0.9,
    patch_embed_lr_mult: float = 0.2,
    last_layer_names: tuple[str, ...] = ("last_layer",),
) -> list[dict[str, Any]]:
    """Fused groups with keys ``params, lr_multiplier, wd_multiplier, is_last_layer, names``.

    A part with a ``blocks`` attribute (a ViT) gets layer-wise decay; other parts (heads) use the
    top multiplier 1. A module shared by two parts (e.g. one head for DINO and iBOT) is counted once.
    """
    groups: dict[tuple[float, float, bool], dict[str, Any]] = {}
    seen: set[int] = set()
    for part_name, module in model_parts.items():
        depth = len(module.blocks) if hasattr(module, "blocks") else None
        for name, param in module.named_parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if depth is None:
                lr_multiplier = 1.0
            else:
                lr_multiplier = layer_decay ** (depth + 1 - _backbone_layer_id(name, depth))
                if name.startswith("patch_embed"):
                    lr_multiplier *= patch_embed_lr_mult
            is_last_layer = any(key in name.split(".") for key in last_layer_names)
            key = (lr_multiplier, _wd_multiplier(name, param), is_last_layer)
            group = groups.setdefault(
                key,
                {"params": [], "lr_multiplier": key[0], "wd_multiplier": key[1], "is_last_layer": key[2], "names": []},
            )
            group["params"].append(param)
            group["names"].append(f"{part_name}.{name}")
    return list(groups.values())


def apply_schedules(
    optimizer: torch.optim.Optimizer, lr: float, weight_decay: float, last_layer_lr: float
) -> None:
    """Set each group's ``lr`` (last-layer groups use ``last_layer_lr``) and ``weight_decay`` from its multipliers."""
    for group in optimizer.param_groups:
        base = last_layer_lr if group.get("is_last_layer", False) else lr
        group["lr"] = base * group.get("lr_multiplier", 1.0)
        group["weight_decay"] = weight_decay * group.get("wd_multiplier", 1.0)
