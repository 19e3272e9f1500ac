"""``curate train-copy-detector``: our SSCD-style copy descriptor trained on a lake, for ``dedup.descriptor``.

One process (like the trainer of ``--pretrain``, never a Dask task): lists the lake with the pipeline's
listing code, decodes a sample of it with the ingest decoder (bad images skipped and counted), then runs
:class:`curate.copydetect.train.CopyDetectorTrainer` into ``--out``; ``--resume`` continues a killed run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from dinolab.curate.copydetect.train import CHECKPOINT, CopyDetectorTrainer, CopyTrainConfig, load_lake_images
from dinolab.curate.lakes.sets import name_sets
from dinolab.curate.lakes.listing import list_uris, units
from dinolab.schemas.config import LakeConfig, PipelineConfig
from dinolab.schemas.storage import parse_storage_options

DEFAULTS = CopyTrainConfig()


def train_copy_detector(
    lake: Annotated[list[str], typer.Option("--lake", help="images to train on: folder, glob, fsspec URL, tar or parquet; repeatable")],
    out: Annotated[Path, typer.Option("--out", help="training folder: checkpoint.pth (resumable; pass it as dedup.descriptor), log.jsonl")],
    arch: Annotated[str, typer.Option("--arch", help="torchvision ResNet trunk (resnet18 on CPU; resnet50 is SSCD's)")] = DEFAULTS.arch,
    steps: Annotated[int, typer.Option("--steps", min=1, help="optimiser steps")] = DEFAULTS.steps,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="images per step (two views each)")] = DEFAULTS.batch_size,
    size: Annotated[int, typer.Option("--size", min=32, help="side of each augmented view")] = DEFAULTS.size,
    lr: Annotated[float, typer.Option("--lr", help="peak AdamW learning rate")] = DEFAULTS.lr,
    entropy_weight: Annotated[float, typer.Option("--entropy-weight", help="λ of the entropy (KoLeo-style) term")] = DEFAULTS.entropy_weight,
    max_images: Annotated[int, typer.Option("--max-images", min=2, help="images decoded from the lake (a seeded sample)")] = 20_000,
    seed: Annotated[int, typer.Option("--seed")] = DEFAULTS.seed,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=1, help="steps between checkpoints")] = DEFAULTS.checkpoint_every,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out")] = False,
    storage_option: Annotated[list[str] | None, typer.Option("--storage-option", help="fsspec option KEY=VALUE for URLs; repeatable")] = None,
) -> None:
    """Train the SSCD-architecture copy descriptor on a lake (InfoNCE + entropy term, SSCD augmentations);
    then use it with `curate run ... dedup.descriptor=OUT/checkpoint.pth`."""
    try:
        config = CopyTrainConfig(arch=arch, steps=steps, batch_size=batch_size, size=size, lr=lr,
                                 entropy_weight=entropy_weight, seed=seed,
                                 checkpoint_every=checkpoint_every)
        pipeline = PipelineConfig(lake=LakeConfig(parse_storage_options(storage_option or [])))
        uris = [uri for image_set in name_sets(lake, "pool", set()) for unit in units(image_set, pipeline)
                for uri in list_uris(unit, pipeline)]
        if len(uris) > max_images:
            chosen = np.random.default_rng(seed).choice(len(uris), size=max_images, replace=False)
            uris = [uris[i] for i in sorted(chosen)]
        images, skipped = load_lake_images(uris, round(size * 1.5), pipeline.lake.storage_options)
        print(f"train-copy-detector: {len(images):,} images decoded ({skipped} unreadable, skipped), "
              f"{arch}, {steps} steps of {min(batch_size, max(len(images), 1))} images")
        trainer = CopyDetectorTrainer(images, out, config, resume=resume)
        checkpoint = trainer.run()
    except (ValueError, OSError) as error:
        print(f"curate train-copy-detector: error: {error}", file=sys.stderr)
        raise typer.Exit(2) from None
    print(f"copy descriptor: {checkpoint} (use dedup.descriptor={out / CHECKPOINT})")
