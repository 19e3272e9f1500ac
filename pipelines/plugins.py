"""Load the embedding model once per Dask worker, not once per task."""

from __future__ import annotations

from distributed import Worker, get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from schemas.config import EmbedConfig

PLUGIN_NAME = "dinolab-embedder"


class EmbedderPlugin(WorkerPlugin):
    """Builds :class:`curate.embed.Embedder` in ``setup`` (the plugin itself is pickled light)."""

    def __init__(self, config: EmbedConfig, threads: int = 1) -> None:
        self.config = config
        self.threads = threads
        self.embedder = None

    def setup(self, worker: Worker) -> None:
        import torch

        from curate.embed import load_embedder

        torch.set_num_threads(self.threads)
        self.embedder = load_embedder(self.config)

    def teardown(self, worker: Worker) -> None:
        self.embedder = None


def worker_embedder():
    """The embedder of the worker running the current task."""
    return get_worker().plugins[PLUGIN_NAME].embedder
