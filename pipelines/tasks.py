"""Task bodies that need the worker itself (its embedder); every other task is a stage function as is."""

from __future__ import annotations

from pathlib import Path

from curate import stages
from pipelines.plugins import worker_embedder
from schemas.config import PipelineConfig


def embed(out: Path, partition: int, config: PipelineConfig) -> dict[str, int]:
    """:func:`curate.stages.embed` with the model this worker loaded once (:class:`EmbedderPlugin`)."""
    return stages.embed(out, partition, config, worker_embedder())
