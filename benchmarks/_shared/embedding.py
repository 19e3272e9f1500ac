"""Shared by the curation benchmarks: the encoders they compare, and image files embedded through the embed
stage's own code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dinolab.curate.embed import Embedder, PixelEncoder, cls_encoder, embed_images
from dinolab.pretrain.data import load_image


def embed_files(model: torch.nn.Module, folder: Path, files: list[str], size: int, mean, std) -> np.ndarray:
    """``[len(files), dim]`` vectors of the images ``folder/name`` (resized whole to ``size``, normalised)."""
    embedder = Embedder("bench", cls_encoder(model.eval()), size, tuple(mean), tuple(std), 0, torch.device("cpu"))
    return embed_images(embedder, [load_image(folder / name) for name in files])


Encoder = tuple[str, torch.nn.Module, int, tuple, tuple]
"""(label, model, input size, mean, std)."""


def encoders(seed: int, weights: str | None = None, image_size: int | None = None) -> list[Encoder]:
    """Raw pixels, a random ``vit_pico`` (seeded) and, given ``weights``, that trained backbone (at
    ``image_size``, default its own input size)."""
    from dinolab.pretrain.models import build_vit

    torch.manual_seed(seed)
    random_vit = build_vit("vit_pico", layerscale_init=1.0)  # 1e-5 would leave CLS nearly input-free
    rows = [
        ("raw pixels (16x16 RGB, centred)", PixelEncoder(16), 28, (0.0,) * 3, (1.0,) * 3),
        ("random vit_pico (untrained)", random_vit, 56, random_vit.preprocessing.mean, random_vit.preprocessing.std),
    ]
    if weights:
        from dinolab.pretrain.checkpoints import load_backbone

        model = load_backbone(weights)
        pre = model.preprocessing
        rows.append((f"trained: {weights}", model, image_size or pre.input_size, pre.mean, pre.std))
    return rows
