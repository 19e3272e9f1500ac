"""Reading and writing weight files without ever running code from them.

PyTorch files are opened with ``torch.load(weights_only=True)`` (tensors, containers and plain values
only); a file whose pickle needs anything else is refused, never retried unsafely. Safetensors files
carry no code by design. Every failure becomes a :class:`CheckpointError` naming the file and the cause.
Writes go to a temporary sibling first and are moved into place, so a failed write loses nothing.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ZIP_MAGIC = b"PK\x03\x04"  # torch.save since 1.6
PICKLE_PROTOCOL_BYTE = 0x80  # legacy torch.save format starts with a pickle PROTO opcode
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


class CheckpointError(ValueError):
    """A weight file that cannot be read as a backbone checkpoint (the message says why)."""


def sniff_format(path: Path) -> str:
    """``"torch"``, ``"safetensors"`` or ``"unknown"`` from the first bytes of a file."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(ZIP_MAGIC) or (head[:1] and head[0] == PICKLE_PROTOCOL_BYTE):
        return "torch"
    if len(head) >= 9:
        header_len = int.from_bytes(head[:8], "little")
        if 0 < header_len < 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    return "unknown"


def read_torch_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with every failure turned into a clear error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = _UNSUPPORTED_GLOBAL.search(str(error))
        detail = f" (it references {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refusing to load: the file needs arbitrary Python objects to unpickle{detail}; "
            "only tensors and plain containers are accepted. Re-save the weights as a state dict "
            "(or as safetensors) from code you trust."
        ) from error
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, IndexError) as error:
        raise CheckpointError(f"{path}: not a readable PyTorch file, truncated or corrupt ({error})") from error


def read_safetensors_file(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and string metadata of a ``.safetensors`` file (CPU)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file, truncated or corrupt ({error})") from error
    return tensors, metadata


def read_json_file(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` (a config file), with clear errors."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not a readable JSON file ({error})") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _plain_tensors(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU tensors that share no storage (safetensors refuses shared or strided tensors)."""
    return {key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()}


def atomic_write(path: Path, write: Callable[[Path], None], overwrite: bool = False) -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``path`` (file or directory), then move it into place.

    An existing ``path`` is kept unless ``overwrite`` is set; it is only replaced once the new content is
    complete.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another name or allow overwriting")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    target = staging / path.name
    try:
        write(target)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_torch_state(state: Mapping[str, Tensor], path: Path, overwrite: bool = False) -> None:
    """A plain ``{name: tensor}`` PyTorch file (loadable with ``weights_only=True``)."""
    tensors = _plain_tensors(state)
    atomic_write(Path(path), lambda target: torch.save(tensors, target), overwrite)


def write_safetensors_file(
    state: Mapping[str, Tensor], path: Path, metadata: Mapping[str, str] | None = None
) -> None:
    """A ``.safetensors`` file at ``path`` (no staging: callers wrap it in :func:`atomic_write`)."""
    from safetensors.torch import save_file

    save_file(_plain_tensors(state), str(path), metadata=dict(metadata or {}))
