"""The released DINOv2 torch-hub layout, which is dinolab's native state dict.

A released backbone file is a flat ``{name: tensor}`` dict whose names equal
:class:`~pretrain.models.VisionTransformer`'s parameters. Training checkpoints of the release differ in
three ways, all undone here: weights nest under ``teacher`` (or ``model`` / ``state_dict``) with
``backbone.`` prefixes next to ``dino_head.`` / ``ibot_head.`` weights (or, for a whole
meta-architecture, ``teacher.backbone.`` beside ``student.``); distributed wrappers add ``module.``; and block-chunked models (FSDP) name blocks ``blocks.{chunk}.{index}`` where ``index`` is
the global block index.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from dinolab.pretrain.checkpoints.safe_io import CheckpointError

WRAPPER_KEYS: tuple[str, ...] = ("teacher", "model", "state_dict")
"""Keys under which training checkpoints nest their weights, in order of preference."""
HEAD_PREFIXES: tuple[str, ...] = ("dino_head.", "ibot_head.")
"""Pretraining heads saved beside the backbone; not part of a backbone."""
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def unwrap_state(obj: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    """The ``{name: tensor}`` dict inside a loaded file, descending through ``teacher``/``model``/... keys."""
    for _ in range(3):  # e.g. {"model": {"teacher": {...}}}
        if _is_tensor_dict(obj):
            return dict(obj)
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[key] for key in WRAPPER_KEYS if isinstance(obj.get(key), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        if tensors:  # a state dict with a few non-tensor entries (e.g. "epoch": 3)
            return tensors
        found = ", ".join(sorted(map(str, obj))[:8]) or "nothing"
        raise CheckpointError(f"{source}: no weights found (top-level keys: {found})")
    raise CheckpointError(f"{source}: not a checkpoint (it holds a {type(obj).__name__}, not a dict of tensors)")


def _strip_prefix(key: str, prefix: str) -> str:
    return key[len(prefix):] if key.startswith(prefix) else key


def backbone_state(obj: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    """Backbone weights in dinolab (= released hub) names from any supported torch-hub-style object.

    Strips ``module.`` and ``backbone.`` prefixes, drops DINO/iBOT head weights and renames chunked
    blocks ``blocks.{chunk}.{i}.*`` to ``blocks.{i}.*``.
    """
    state = {_strip_prefix(k, "module."): v for k, v in unwrap_state(obj, source).items()}
    if any(key.startswith("teacher.") for key in state):  # whole meta-architecture: keep the teacher
        state = {key[len("teacher."):]: v for key, v in state.items() if key.startswith("teacher.")}
    renamed: dict[str, Tensor] = {}
    has_backbone_prefix = any(k.startswith("backbone.") for k in state)
    for key, value in state.items():
        name = key
        if name.startswith(HEAD_PREFIXES):
            continue
        if has_backbone_prefix:
            if not name.startswith("backbone."):
                raise CheckpointError(
                    f"{source}: unexpected weight {key!r} beside the 'backbone.' weights"
                )
            name = name[len("backbone."):]
        name = _CHUNKED_BLOCK.sub(r"blocks.\1.", name)
        if name in renamed:
            raise CheckpointError(f"{source}: two weights map to {name!r} (conflicting block chunks?)")
        renamed[name] = value
    if not renamed:
        raise CheckpointError(f"{source}: holds only pretraining-head weights, no backbone")
    return renamed


def chunk_blocks(state: Mapping[str, Tensor], num_chunks: int) -> dict[str, Tensor]:
    """The block-chunked naming of the release's FSDP training (``blocks.{chunk}.{i}``), for tests/tools.

    Blocks are split into ``num_chunks`` consecutive groups of equal size, as the release does.
    """
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k)))
    per_chunk = -(-depth // num_chunks)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        match = re.match(r"^blocks\.(\d+)\.(.*)$", key)
        if match:
            index = int(match.group(1))
            key = f"blocks.{index // per_chunk}.{index}.{match.group(2)}"
        out[key] = value
    return out
