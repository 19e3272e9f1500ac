"""Connecting to Dask: an existing scheduler (``--scheduler tcp://HOST:PORT``), a local cluster of processes, or
SLURM jobs (``--cluster slurm``, :mod:`pipelines.slurm`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from distributed import Client, LocalCluster

from dinolab.schemas.config import SlurmConfig


class ClusterError(RuntimeError):
    """No Dask cluster could be reached or started."""


def default_workers() -> int:
    """One single-threaded worker process per core (stage tasks are CPU-bound Python and torch)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _dashboard_address() -> str | None:
    try:
        import bokeh  # noqa: F401  (the dashboard needs it)
    except ImportError:
        return None
    return "127.0.0.1:0"


CLUSTERS = ("local", "slurm")


@contextlib.contextmanager
def connect(scheduler: str | None = None, workers: int | None = None, memory_limit: str | None = None,
            timeout: float = 10.0, cluster: str = "local", slurm: SlurmConfig | None = None) -> Iterator[Client]:
    """A :class:`~distributed.Client` of ``scheduler``, or of a fresh cluster (``local`` or ``slurm``) closed on exit."""
    if cluster not in CLUSTERS:
        raise ClusterError(f"--cluster {cluster}: choose one of {', '.join(CLUSTERS)}")
    if scheduler and cluster != "local":
        raise ClusterError("--scheduler and --cluster slurm exclude each other: a running scheduler has its workers")
    if cluster == "slurm":
        from dinolab.pipelines.slurm import slurm_cluster

        with slurm_cluster(slurm or SlurmConfig()) as jobs, Client(jobs) as client:
            yield client
        return
    if scheduler:
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError) as error:
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler} ({type(error).__name__}: {error})") from None
        with client:
            yield client
        return
    cluster = LocalCluster(
        n_workers=workers or default_workers(), threads_per_worker=1, processes=True,
        memory_limit=memory_limit or "auto", dashboard_address=_dashboard_address(), host="127.0.0.1",
    )
    with cluster, Client(cluster) as client:
        yield client


def worker_has_gpu(client: Client) -> bool:
    """Whether the workers advertise a ``GPU`` resource (``dask worker --resources GPU=1``)."""
    info = client.scheduler_info(n_workers=-1)
    return any("GPU" in worker.get("resources", {}) for worker in info.get("workers", {}).values())
