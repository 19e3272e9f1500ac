"""The embed stage: one vector per readable image, from raw pixels or any backbone ``load_backbone`` reads.

An :class:`Embedder` is built once per worker (:func:`load_embedder`) and applied to one partition of
the ``images`` table at a time (:func:`embed_partition`), which returns the ``embeddings`` rows and the
float32 matrix they index. Images are decoded from their bytes by the same decoder as ingest, resized
whole (no crop, so copy detection sees the borders) to the embedder's square input::

    embedder = load_embedder(EmbedConfig(embedder="pixels"))
    rows, vectors = embed_partition(images_part, embedder, max_pixels=10**8)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from dinolab.curate.lakes import Reader, read_partition
from dinolab.curate.lakes import embeddings as lake_embeddings
from dinolab.curate.lakes.uris import LakeError
from dinolab.pretrain.data.images import ImageDecodeError, decode_image
from dinolab.schemas.config import EmbedConfig
from dinolab.schemas.tables import EMBEDDINGS

RANDOM_WEIGHTS_SEED = 0
"""An architecture name gives random weights: seeded, so every worker builds the same model."""


class PixelEncoder(nn.Module):
    """Raw-pixel "backbone": ``grid x grid`` average-pooled RGB, centred per image (no weights at all).

    Cosine similarity of these vectors is a correlation of thumbnails: exact copies and re-encodes
    score ~1, so it is an honest baseline when no trained weights exist.
    """

    def __init__(self, grid: int = 16) -> None:
        super().__init__()
        self.grid = grid
        self.embed_dim = 3 * grid * grid

    def forward(self, images: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(images, self.grid).flatten(1)
        return pooled - pooled.mean(dim=1, keepdim=True)


def cls_encoder(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """``images -> [B, D]``: the final-norm CLS token of a ViT of this project, else ``model(images)``."""
    if hasattr(model, "forward_features"):
        return lambda images: model.forward_features(images).cls_token
    return model


@dataclass
class Embedder:
    """What the embed stage needs of a model: how to prepare images and how to encode a batch."""

    name: str
    encode: Callable[[Tensor], Tensor]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dim: int
    device: torch.device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_embedder(config: EmbedConfig) -> Embedder:
    """``pixels``, an architecture name (seeded random weights) or a checkpoint ``load_backbone`` reads."""
    device = resolve_device(config.device)
    if config.embedder == "pixels":
        encoder = PixelEncoder(config.pixel_grid)
        return Embedder("pixels", encoder, config.pixel_grid, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), encoder.embed_dim, device)
    from dinolab.pretrain.checkpoints import load_backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model = load_backbone(config.embedder, device=device)
    pre = model.preprocessing
    return Embedder(config.embedder, cls_encoder(model), config.image_size, tuple(pre.mean), tuple(pre.std),
                    model.embed_dim, device)


def image_tensor(image: Image.Image, size: int) -> Tensor:
    """RGB float tensor ``[3, size, size]`` in [0, 1]: the whole image resized (aspect not kept, no crop)."""
    resized = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    array = np.asarray(resized, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


@torch.inference_mode()
def embed_images(embedder: Embedder, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
    """``[len(images), dim]`` float32 vectors, in batches (bf16 autocast on CUDA, fp32 on CPU)."""
    mean = torch.tensor(embedder.mean, device=embedder.device).view(1, 3, 1, 1)
    std = torch.tensor(embedder.std, device=embedder.device).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([image_tensor(image, embedder.image_size) for image in images[start : start + batch_size]])
        batch = (batch.to(embedder.device) - mean) / std
        with torch.autocast(embedder.device.type, dtype=torch.bfloat16, enabled=embedder.device.type == "cuda"):
            features = embedder.encode(batch)
        out.append(features.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, embedder.dim), dtype=np.float32)


def embed_partition(
    images: pa.Table, embedder: Embedder, max_pixels: int, batch_size: int = 64,
    storage_options: Mapping[str, Any] | None = None, read: Reader | None = None,
) -> tuple[pa.Table, np.ndarray]:
    """Embed the ``ok`` rows of one partition of ``images``: (``embeddings`` rows, ``[n, dim]`` matrix).

    Files are read by ``read`` (default: the lake, each container opened once,
    :func:`curate.lakes.read_partition`). A file that no longer reads or decodes (changed since ingest) is
    left out rather than failing the task. Rows of a precomputed-embeddings lake (``emb://`` uris,
    :mod:`curate.lakes.embeddings`) take their vector from it, after the embedded ones.
    """
    read = read or functools.partial(read_partition, storage_options=storage_options)
    decode_side = max(4 * embedder.image_size, 256)
    rows = images.filter(pc.equal(images["status"], "ok")).to_pylist()
    given = [row for row in rows if lake_embeddings.is_row(row["uri"])]
    rows = [row for row in rows if not lake_embeddings.is_row(row["uri"])]
    pictures: dict[str, Image.Image] = {}
    for uri, data in read([row["uri"] for row in rows]):
        if isinstance(data, BaseException) and not isinstance(data, OSError):
            raise data  # not a missing or changed file: let the task fail and be retried
        try:
            if not isinstance(data, BaseException):
                pictures[uri] = decode_image(data, uri, max_side=decode_side, max_pixels=max_pixels, min_side=1).image
        except ImageDecodeError:
            continue
    keys, roles, sets, decoded = [], [], [], []
    for row in rows:
        if row["uri"] not in pictures:
            continue
        decoded.append(pictures[row["uri"]])
        keys.append(row["key"])
        roles.append(row["role"])
        sets.append(row["set"])
    vectors = embed_images(embedder, decoded, batch_size)
    if given:
        precomputed = lake_embeddings.vectors([row["uri"] for row in given])
        if keys and vectors.shape[1] != precomputed.shape[1]:
            raise LakeError(f"precomputed embeddings of dimension {precomputed.shape[1]} beside images the embedder "
                            f"turns into {vectors.shape[1]}: give every set as embeddings of one model, or none")
        vectors = np.concatenate([vectors, precomputed]) if keys else precomputed
        for row in given:
            keys.append(row["key"])
            roles.append(row["role"])
            sets.append(row["set"])
    table = pa.table(
        {"key": keys, "role": roles, "set": sets, "row": np.arange(len(keys), dtype=np.int32)},
        schema=EMBEDDINGS.schema,
    )
    return table, vectors
