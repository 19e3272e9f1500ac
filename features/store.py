"""The feature file format shared by extraction, k-NN, retrieval and curation.

A feature file is one safetensors file:

- tensors ``cls`` float32 ``[N, D]`` (normed class token), optionally ``patch_mean`` float32 ``[N, D]``
  (mean of the normed patch tokens) and ``labels`` int64 ``[N]`` (``-1`` = unknown);
- string metadata: ``format`` = ``"dinolab-features"``, ``format_version`` = ``"1"``, ``count`` = N,
  ``info`` = JSON object (model description, preprocessing, image root, class names...), and, when they
  fit in :data:`HEADER_LIST_MAX_BYTES`, ``names`` (JSON list of N image names, row order) and
  ``skipped`` (JSON list of ``[name, reason]``).

When the lists are larger they go to a sidecar ``<file>.json`` (``{"id", "count", "names", "skipped"}``)
and the header holds ``sidecar`` (its file name) and ``sidecar_id`` (a random id both files carry, so a
sidecar from another extraction is caught)::

    save_features("train.safetensors", features)
    features = load_features("train.safetensors")
    features.cls.shape, len(features.names)
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

FORMAT_NAME = "dinolab-features"
FORMAT_VERSION = "1"
HEADER_LIST_MAX_BYTES = 1_000_000
"""Name and skip lists longer than this (as JSON) are written to the sidecar instead of the header."""


class FeatureFileError(Exception):
    """A feature file (or its sidecar) that is missing, corrupt, or inconsistent."""


@dataclass
class Features:
    """Features of N images: ``cls`` ``[N, D]``, optional ``patch_mean`` ``[N, D]`` and ``labels`` ``[N]``.

    ``names[i]`` names row i; ``skipped`` holds ``(name, reason)`` of images that could not be read;
    ``info`` describes the model and preprocessing (JSON-able).
    """

    cls: Tensor
    names: list[str]
    labels: Tensor | None = None
    patch_mean: Tensor | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        count = self.cls.shape[0]
        if self.cls.ndim != 2:
            raise ValueError(f"cls must be [N, D], got shape {tuple(self.cls.shape)}")
        if len(self.names) != count:
            raise ValueError(f"{count} feature rows but {len(self.names)} names")
        if self.patch_mean is not None and self.patch_mean.shape != self.cls.shape:
            raise ValueError(f"patch_mean shape {tuple(self.patch_mean.shape)} != cls {tuple(self.cls.shape)}")
        if self.labels is not None and self.labels.shape != (count,):
            raise ValueError(f"labels shape {tuple(self.labels.shape)} != ({count},)")

    def __len__(self) -> int:
        return self.cls.shape[0]

    @property
    def dim(self) -> int:
        return self.cls.shape[1]


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def save_features(path: str | Path, features: Features) -> Path:
    """Write ``features`` to ``path`` (atomically: a partial file never replaces a good one)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {"cls": features.cls.detach().float().contiguous().cpu()}
    if features.patch_mean is not None:
        tensors["patch_mean"] = features.patch_mean.detach().float().contiguous().cpu()
    if features.labels is not None:
        tensors["labels"] = features.labels.detach().to(torch.int64).contiguous().cpu()
    names_json = json.dumps(features.names, ensure_ascii=False)
    skipped_json = json.dumps([list(item) for item in features.skipped], ensure_ascii=False)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "count": str(len(features)),
        "info": json.dumps(features.info, ensure_ascii=False),
    }
    sidecar = sidecar_path(path)
    if len(names_json) + len(skipped_json) <= HEADER_LIST_MAX_BYTES:
        metadata["names"], metadata["skipped"] = names_json, skipped_json
        sidecar_payload = None
    else:
        metadata["sidecar"], metadata["sidecar_id"] = sidecar.name, uuid.uuid4().hex
        sidecar_payload = {
            "id": metadata["sidecar_id"],
            "count": len(features),
            "names": features.names,
            "skipped": [list(item) for item in features.skipped],
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    if sidecar_payload is not None:
        _atomic_write(sidecar, lambda tmp: tmp.write_text(json.dumps(sidecar_payload, ensure_ascii=False)))
    elif sidecar.exists():  # an old sidecar would contradict the new file
        sidecar.unlink()
    _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_feature_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata of a feature file, validated (cheap: no tensor is read)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(f"{path}: no such feature file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for bad headers
        raise FeatureFileError(
            f"{path}: unreadable: not a safetensors file, or corrupt or truncated ({error})"
        ) from error
    if metadata.get("format") != FORMAT_NAME:
        raise FeatureFileError(
            f"{path}: not a dinolab feature file (metadata format={metadata.get('format')!r}); "
            "create one with 'features extract'"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise FeatureFileError(
            f"{path}: feature format version {metadata.get('format_version')!r}, this dinolab reads "
            f"{FORMAT_VERSION!r}"
        )
    return metadata


def load_features(path: str | Path) -> Features:
    """Read a feature file written by :func:`save_features`; every inconsistency is a :class:`FeatureFileError`."""
    from safetensors.torch import load_file

    path = Path(path)
    metadata = read_feature_metadata(path)
    try:
        tensors = load_file(str(path))
    except Exception as error:
        raise FeatureFileError(f"{path}: tensor data is corrupt or truncated ({error})") from error
    if "cls" not in tensors:
        raise FeatureFileError(f"{path}: no 'cls' tensor")
    try:
        count = int(metadata["count"])
        info = json.loads(metadata["info"])
        if "sidecar" in metadata:
            names, skipped = _read_sidecar(path, metadata, count)
        else:
            names, skipped = json.loads(metadata["names"]), json.loads(metadata["skipped"])
    except (KeyError, ValueError) as error:
        raise FeatureFileError(f"{path}: metadata is incomplete or not valid JSON ({error})") from error
    rows = {key: value.shape[0] for key, value in tensors.items()}
    if len(names) != count or any(n != count for n in rows.values()):
        raise FeatureFileError(f"{path}: row counts disagree (count={count}, names={len(names)}, tensors={rows})")
    try:
        return Features(
            cls=tensors["cls"],
            names=[str(name) for name in names],
            labels=tensors.get("labels"),
            patch_mean=tensors.get("patch_mean"),
            skipped=[(str(name), str(reason)) for name, reason in skipped],
            info=info,
        )
    except ValueError as error:
        raise FeatureFileError(f"{path}: {error}") from error


def _read_sidecar(path: Path, metadata: dict[str, str], count: int) -> tuple[list[Any], list[Any]]:
    sidecar = path.with_name(metadata["sidecar"])
    if not sidecar.is_file():
        raise FeatureFileError(f"{path}: its name list {sidecar} is missing (keep the two files together)")
    try:
        payload = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise FeatureFileError(f"{sidecar}: corrupt name list ({error})") from error
    if payload.get("id") != metadata["sidecar_id"] or payload.get("count") != count:
        raise FeatureFileError(f"{sidecar}: name list belongs to another feature file (id or count mismatch)")
    return payload["names"], payload["skipped"]
