"""A step whose workers all sit paused at Dask's memory threshold fails with a one-line error instead of waiting.

A Dask worker stops taking tasks while its process memory is above ``distributed.worker.memory.pause`` (80 %
of ``--memory-limit``) and resumes when it falls below. Our tasks keep no results on the workers, so a worker
that stays paused while running nothing holds memory no task will free: its imports and allocator arenas
(about 1.2 GB for a worker that has run an embed task). The run would wait forever; :class:`PauseWatch`
cancels the step's tasks once every worker has been paused and idle for :data:`PAUSED_LIMIT_S` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from distributed import Client, Future

from dinolab.pipelines.cluster import ClusterError

PAUSED_LIMIT_S = 300.0
"""Seconds every worker may stay paused with no task running before the step fails."""
CHECK_EVERY_S = 5.0


class WorkersPaused(ClusterError):
    """Every worker stayed paused at its memory threshold: the memory limit is too small for the work."""


def all_paused(client: Client) -> str | None:
    """Each worker's memory against its limit, when every worker is paused and runs no task; else None."""
    workers = list(client.scheduler_info(n_workers=-1).get("workers", {}).values())
    if not workers or any(worker.get("status") != "paused"
                          or worker.get("metrics", {}).get("task_counts", {}).get("executing")
                          for worker in workers):
        return None
    return ", ".join(f"{worker['metrics']['memory'] / 2**30:.2f} of {worker['memory_limit'] / 2**30:.2f} GiB"
                     for worker in workers)


class PauseWatch:
    """While in its ``with`` block, checks the cluster every :data:`CHECK_EVERY_S` s and cancels ``futures``
    once every worker has been paused and idle for ``limit`` seconds; ``error`` then says why."""

    def __init__(self, client: Client, futures: Sequence[Future], label: str, limit: float | None = None) -> None:
        self.client, self.futures, self.label = client, list(futures), label
        self.limit = PAUSED_LIMIT_S if limit is None else limit
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="dinolab-pause-watch", daemon=True)

    def __enter__(self) -> PauseWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        since = None
        while not self._stop.wait(min(CHECK_EVERY_S, self.limit / 2)):
            try:
                memory = all_paused(self.client)
            except Exception:  # the scheduler is gone: the futures fail on their own
                return
            now = time.monotonic()
            since = None if memory is None else since or now
            if since is not None and now - since >= self.limit:
                self.error = (f"{self.label}: every Dask worker has been paused at its memory threshold for "
                              f"{now - since:.0f} s with no task running (process memory {memory}); "
                              "give the workers more memory (--memory-limit) or fewer workers a machine")
                self.client.cancel(self.futures)
                return
