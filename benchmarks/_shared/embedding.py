"""Shared by the curation benchmarks: embed image files through the embed stage's own code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from curate.embed import Embedder, cls_encoder, embed_images
from pretrain.data import load_image


def embed_files(model: torch.nn.Module, folder: Path, files: list[str], size: int, mean, std) -> np.ndarray:
    """``[len(files), dim]`` vectors of the images ``folder/name`` (resized whole to ``size``, normalised)."""
    embedder = Embedder("bench", cls_encoder(model.eval()), size, tuple(mean), tuple(std), 0, torch.device("cpu"))
    return embed_images(embedder, [load_image(folder / name) for name in files])
