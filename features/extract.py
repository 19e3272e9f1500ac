"""Frozen-backbone feature extraction: normed CLS (and mean patch token) for every image of a dataset.

::

    dataset = ImageFolder("photos/", transform=eval_transform(model.preprocessing, patch_size=14))
    features = extract_features(model, dataset, batch_size=64, pooled_patches=True)
    save_features("photos.safetensors", features)

On CUDA the forward runs under bf16 autocast (features are returned in float32); on CPU it runs in
float32. Files that cannot be decoded are skipped and listed in ``Features.skipped``.

``compile=True`` runs the forward through ``torch.compile`` (on CPU with inductor's freezing: weights
become constants, pre-packed for oneDNN, and norms/GELU/LayerScale fuse with their neighbours). The
first batch pays the compile time (tens of seconds to minutes), so it pays off on large extractions
only; a last partial batch is padded to the first batch's size so that one compiled graph serves every batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dinolab.pretrain.data.samples import Batch, collate_samples
from dinolab.features.store import Features
from dinolab.pretrain.models.vit import BackboneOutput


def extract_features(
    model: nn.Module,
    data: Dataset | Iterable[Batch],
    batch_size: int = 64,
    pooled_patches: bool = False,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
    info: dict[str, Any] | None = None,
    compile: bool = False,
) -> Features:
    """Run ``model.forward_features`` over ``data`` and collect the features of every readable image.

    ``data`` is a map-style dataset of :class:`~pretrain.data.samples.Sample` items (a DataLoader is made
    with ``batch_size``/``num_workers``), or any iterable of :class:`~pretrain.data.samples.Batch` (a
    DataLoader with ``collate_fn=collate_samples``, or :class:`~pretrain.data.samples.TensorBatches`).
    ``device`` defaults to the model's; the model is moved there and run in eval mode (its training
    flag is restored afterwards). ``info`` is stored as the features' description. ``compile``: see
    the module docstring.
    """
    target = _resolve_device(model, device)
    model.to(target)
    batches, total = _as_batches(data, batch_size, num_workers, pin_memory=target.type == "cuda")
    cls_rows: list[Tensor] = []
    patch_rows: list[Tensor] = []
    labels: list[Tensor] = []
    names: list[str] = []
    skipped: list[tuple[str, str]] = []
    was_training = model.training
    model.eval()
    forward = compiled_forward(model, target) if compile else model.forward_features
    bar = tqdm(total=total, unit="img", desc="extract", disable=not progress, dynamic_ncols=True)
    try:
        with torch.inference_mode(), _autocast(target):
            for batch in batches:
                skipped.extend((item.name, item.reason) for item in batch.skipped)
                if len(batch):
                    images = batch.images.to(target, non_blocking=True)
                    output = forward(images)
                    cls_rows.append(output.cls_token.float().cpu())
                    if pooled_patches:
                        patch_rows.append(output.patch_tokens.float().mean(dim=1).cpu())
                    labels.append(batch.labels.cpu())
                    names.extend(batch.names)
                bar.update(len(batch) + len(batch.skipped))
                if batch.skipped:
                    bar.set_postfix(skipped=len(skipped))
    finally:
        bar.close()
        model.train(was_training)
    return _assemble(model, cls_rows, patch_rows if pooled_patches else None, labels, names, skipped, info)


def compiled_forward(model: nn.Module, device: torch.device) -> Callable[[Tensor], BackboneOutput]:
    """``model.forward_features`` compiled for inference at the first batch's size (smaller batches padded).

    CPU: inductor with ``freezing`` (constant-folded, pre-packed weights); CUDA: inductor defaults.
    Call it under ``torch.inference_mode()``.
    """
    options = {"freezing": True} if device.type == "cpu" else {}
    compiled = torch.compile(model.forward_features, dynamic=False, options=options)
    full_batch: list[int] = []  # set by the first call

    def forward(images: Tensor) -> BackboneOutput:
        count = images.shape[0]
        if not full_batch:
            full_batch.append(count)
        if count >= full_batch[0]:
            return compiled(images)
        padded = torch.cat([images, images.new_zeros(full_batch[0] - count, *images.shape[1:])])
        out = compiled(padded)
        masks = None if out.masks is None else out.masks[:count]
        return BackboneOutput(out.cls_token[:count], out.register_tokens[:count], out.patch_tokens[:count],
                              out.prenorm[:count], masks, out.grid_hw)

    return forward


def _assemble(
    model: nn.Module,
    cls_rows: list[Tensor],
    patch_rows: list[Tensor] | None,
    labels: list[Tensor],
    names: list[str],
    skipped: list[tuple[str, str]],
    info: dict[str, Any] | None,
) -> Features:
    dim = int(getattr(model, "embed_dim", 0))
    cls = torch.cat(cls_rows) if cls_rows else torch.empty(0, dim)
    patch_mean = None
    if patch_rows is not None:
        patch_mean = torch.cat(patch_rows) if patch_rows else torch.empty(0, dim)
    all_labels = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    has_labels = bool((all_labels >= 0).any())
    return Features(
        cls=cls,
        names=names,
        labels=all_labels if has_labels else None,
        patch_mean=patch_mean,
        skipped=skipped,
        info=dict(info or {}),
    )


def _resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; CPU stays in float32 (bf16 matmuls are far slower on most CPUs)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _as_batches(
    data: Dataset | Iterable[Batch], batch_size: int, num_workers: int, pin_memory: bool
) -> tuple[Iterable[Batch], int | None]:
    """``(batches, number of images or None)`` for a DataLoader, a dataset, or an iterable of batches."""
    if isinstance(data, DataLoader):
        return data, _length(data.dataset)
    if isinstance(data, Dataset):
        loader = DataLoader(
            data,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=collate_samples,
            pin_memory=pin_memory,
        )
        return loader, _length(data)
    return data, getattr(data, "num_images", None)


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:  # an IterableDataset without __len__
        return None
