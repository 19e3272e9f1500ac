"""Chunked, resumable, shardable embedding of an image folder (the "embed" step of curation).

The sorted file list is cut into chunks of ``chunk_size`` images; rank ``r`` of ``world_size``
processes (``torchrun`` sets ``RANK``/``WORLD_SIZE``) embeds chunks ``r, r + world_size, ...``. Each
chunk is one ``chunk_NNNNN.safetensors`` holding ``embeddings`` [n, D] (float32 CLS features),
``sizes`` [n, 2] (width, height) and, in its metadata, the image names and the files that could not be
decoded. Chunks are written atomically; a rerun skips every chunk that loads and lists the expected
names, and redoes a missing, partial or corrupt one.

Example::

    files = list_images(folder)
    pre = model.preprocessing
    embed_folder(cls_encoder(model), folder, files, out, 224, pre.mean, pre.std, chunk_size=1024)
    table = load_embeddings(out, files, chunk_size=1024)  # .embeddings, .names, .sizes, .skipped
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from curate.manifest import atomic_path
from pretrain.data import ImageDecodeError

CHUNK_FORMAT = "dinolab-curate-embeddings-1"


def list_images(root: str | Path) -> list[str]:
    """Image paths under ``root`` (recursive, by :data:`pretrain.data.IMAGE_SUFFIXES`), relative, sorted."""
    from pretrain.data import is_image_file

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    return sorted(
        path.relative_to(root).as_posix() for path in root.rglob("*") if is_image_file(path) and path.is_file()
    )


def chunk_path(directory: Path, chunk: int) -> Path:
    return directory / f"chunk_{chunk:05d}.safetensors"


def chunk_ranges(count: int, chunk_size: int) -> list[range]:
    return [range(start, min(start + chunk_size, count)) for start in range(0, count, chunk_size)]


def shard_from_environment() -> tuple[int, int]:
    """(rank, world_size) from the variables ``torchrun`` sets; (0, 1) without them."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def decode_image(path: Path, size: int) -> tuple[Tensor, tuple[int, int]]:
    """RGB float tensor ``[3, size, size]`` in [0, 1] (whole image resized, no crop) and (width, height).

    Decoding goes through :func:`pretrain.data.load_image` (grayscale, palette, alpha, 16-bit, EXIF
    rotation); unusable files raise :class:`pretrain.data.ImageDecodeError`.
    """
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    from pretrain.data import load_image

    rgb = load_image(path, max_side=max(4 * size, 256))
    with Image.open(path) as header:  # full resolution, read from the header only
        original_size = header.size
    pixels = pil_to_tensor(rgb).float().div(255)[None]
    resized = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True)
    return resized[0].clamp(0, 1), original_size


class _ChunkImages(torch.utils.data.Dataset):
    def __init__(self, root: Path, names: Sequence[str], size: int) -> None:
        self.root, self.names, self.size = root, list(names), size

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, tuple[int, int], str]:
        try:
            pixels, size = decode_image(self.root / self.names[index], self.size)
            return index, pixels, size, ""
        except ImageDecodeError as error:
            return index, None, (0, 0), error.reason[:300]


def _as_list(batch: list) -> list:
    """Collate function keeping the items as they are (undecodable ones carry no pixels)."""
    return batch


class PixelEncoder(nn.Module):
    """Raw-pixel baseline "backbone": ``grid x grid`` average-pooled RGB, centred per image.

    Cosine similarity of these vectors is a correlation of thumbnails; useful to calibrate copy
    detection without pretrained weights.
    """

    def __init__(self, grid: int = 16) -> None:
        super().__init__()
        self.grid = grid
        self.embed_dim = 3 * grid * grid

    def forward(self, images: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(images, self.grid).flatten(1)
        return pooled - pooled.mean(dim=1, keepdim=True)


def cls_encoder(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """``images -> [B, D]`` features: the final-norm CLS token for a dinolab ViT, else ``model(images)``."""
    if hasattr(model, "forward_features"):
        return lambda images: model.forward_features(images).cls_token
    return model


@dataclass(frozen=True)
class EmbedPlan:
    """Which chunks this rank owns and which of those are already done."""

    chunks: list[int]
    done: list[int]

    @property
    def todo(self) -> list[int]:
        done = set(self.done)
        return [chunk for chunk in self.chunks if chunk not in done]


def read_chunk(path: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[list[str]]]:
    """(embeddings, sizes, names, skipped [name, reason]) of one chunk file; raises if unreadable."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != CHUNK_FORMAT:
            raise ValueError(f"{path} is not a dinolab embedding chunk")
        embeddings = handle.get_tensor("embeddings")
        sizes = handle.get_tensor("sizes")
    names = json.loads(metadata["names"])
    skipped = json.loads(metadata["skipped"])
    if len(names) != len(embeddings) or len(sizes) != len(embeddings):
        raise ValueError(f"{path}: {len(names)} names for {len(embeddings)} embeddings")
    return embeddings, sizes, names, skipped


def chunk_is_complete(path: Path, expected_names: Sequence[str]) -> bool:
    """True when ``path`` opens, its arrays match its name list, and it covers exactly
    ``expected_names`` (embedded or skipped). Reads the header only."""
    from safetensors import safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
            rows = {handle.get_slice(key).get_shape()[0] for key in ("embeddings", "sizes")}
        names, skipped = json.loads(metadata["names"]), json.loads(metadata["skipped"])
    except Exception:  # noqa: BLE001 - partial or corrupt file: redo the chunk
        return False
    if metadata.get("format") != CHUNK_FORMAT or rows != {len(names)}:
        return False
    return sorted(names + [name for name, _ in skipped]) == sorted(expected_names)


def plan_chunks(
    directory: Path, files: Sequence[str], chunk_size: int, rank: int = 0, world_size: int = 1
) -> EmbedPlan:
    ranges = chunk_ranges(len(files), chunk_size)
    mine = list(range(rank, len(ranges), world_size))
    done = [c for c in mine if chunk_is_complete(chunk_path(directory, c), [files[i] for i in ranges[c]])]
    return EmbedPlan(mine, done)


def write_chunk(
    path: Path, embeddings: Tensor, sizes: Tensor, names: list[str], skipped: list[list[str]]
) -> None:
    from safetensors.torch import save_file

    metadata = {"format": CHUNK_FORMAT, "names": json.dumps(names), "skipped": json.dumps(skipped)}
    with atomic_path(path) as temporary:
        save_file(
            {"embeddings": embeddings.float().contiguous(), "sizes": sizes.long().contiguous()},
            str(temporary),
            metadata=metadata,
        )


@torch.inference_mode()
def embed_chunk(
    encode: Callable[[Tensor], Tensor],
    root: Path,
    names: Sequence[str],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 0,
) -> tuple[Tensor, Tensor, list[str], list[list[str]]]:
    """Embed the images ``names`` under ``root``: (embeddings, sizes, embedded names, skipped)."""
    loader = torch.utils.data.DataLoader(
        _ChunkImages(root, names, image_size),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_as_list,
    )
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    features, sizes, kept, skipped = [], [], [], []
    for batch in loader:
        good = [item for item in batch if item[1] is not None]
        skipped += [[names[index], reason] for index, pixels, _, reason in batch if pixels is None]
        if not good:
            continue
        images = (torch.stack([item[1] for item in good]).to(device) - mean_t) / std_t
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            output = encode(images)
        features.append(output.float().cpu())
        sizes.append(torch.tensor([item[2] for item in good]))
        kept += [names[item[0]] for item in good]
    dim_probe = features[0].shape[1] if features else 0
    return (
        torch.cat(features) if features else torch.zeros(0, dim_probe),
        torch.cat(sizes) if sizes else torch.zeros(0, 2, dtype=torch.long),
        kept,
        skipped,
    )


def embed_folder(
    encode: Callable[[Tensor], Tensor],
    root: str | Path,
    files: Sequence[str],
    directory: str | Path,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    chunk_size: int = 1024,
    batch_size: int = 64,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> EmbedPlan:
    """Embed this rank's chunks that are not done yet; returns the plan it followed."""
    from tqdm import tqdm

    root, directory, device = Path(root), Path(directory), torch.device(device)
    directory.mkdir(parents=True, exist_ok=True)
    plan = plan_chunks(directory, files, chunk_size, rank, world_size)
    ranges = chunk_ranges(len(files), chunk_size)
    bar = tqdm(plan.todo, desc=f"embed rank {rank}/{world_size}", unit="chunk", disable=not progress)
    for chunk in bar:
        names = [files[i] for i in ranges[chunk]]
        result = embed_chunk(encode, root, names, image_size, mean, std, device, batch_size, num_workers)
        write_chunk(chunk_path(directory, chunk), *result)
    return plan


@dataclass(frozen=True)
class EmbeddingTable:
    """All chunks of one image set, in file order (undecodable files are listed in ``skipped``)."""

    embeddings: np.ndarray
    names: list[str]
    sizes: np.ndarray
    skipped: list[list[str]]


def load_embeddings(directory: str | Path, files: Sequence[str], chunk_size: int) -> EmbeddingTable:
    """Concatenate every chunk; raises ``FileNotFoundError`` naming the chunks still missing."""
    directory = Path(directory)
    ranges = chunk_ranges(len(files), chunk_size)
    missing = [
        chunk_path(directory, c).name
        for c, span in enumerate(ranges)
        if not chunk_is_complete(chunk_path(directory, c), [files[i] for i in span])
    ]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise FileNotFoundError(f"{len(missing)} embedding chunks missing or incomplete in {directory}: {shown}")
    parts = [read_chunk(chunk_path(directory, c)) for c in range(len(ranges))]
    dims = {p[0].shape[1] for p in parts if len(p[0])}
    if len(dims) > 1:
        raise ValueError(f"chunks in {directory} have different dims {sorted(dims)}: mixed backbones?")
    dim = dims.pop() if dims else 0
    return EmbeddingTable(
        np.concatenate([p[0].reshape(-1, dim) for p in parts]).astype(np.float32),
        [name for p in parts for name in p[2]],
        np.concatenate([p[1].reshape(-1, 2) for p in parts]),
        [item for p in parts for item in p[3]],
    )
