"""Dask workers as SLURM jobs through dask-jobqueue (``curate run --cluster slurm``, settings in the ``slurm`` section).

Each job runs one or more worker processes of one thread each. A GPU job (``slurm.gpu=true``) books
one GPU (``--gres=gpu:1``) and runs exactly one worker advertising ``--resources GPU=1``, so the embed
stage's tasks, which ask for a GPU, land one per GPU, and SLURM's ``CUDA_VISIBLE_DEVICES`` gives that
worker its own device. Workers leave cleanly before the walltime (``--lifetime``, staggered) and the
cluster keeps ``slurm.jobs`` jobs running (adaptive with a fixed size), so a worker that leaves is
replaced and its tasks rescheduled; a preempted job is the same as a worker that died::

    print(job_script(load_config("lvd.yaml", ["slurm.gpu=true", "slurm.walltime=02:00:00"]).slurm))
"""

from __future__ import annotations

import re
import sys
from typing import Any

from dinolab.schemas.config import ConfigError, SlurmConfig

LIFETIME_MARGIN_S = 5 * 60
"""Default ``--lifetime``: the walltime less this, so a worker hands its tasks back before SLURM kills it."""


def walltime_seconds(walltime: str) -> int:
    """Seconds of a SLURM time (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``)."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", walltime.strip())
    if not match:
        raise ConfigError(f"slurm.walltime={walltime!r}: expected HH:MM:SS or D-HH:MM:SS")
    days, first, second, third = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if third is not None:
        return (int(first) * 60 + int(second)) * 60 + int(third)
    if second is not None:
        return int(first) * 60 + int(second)
    return int(first) * 60


def lifetime(config: SlurmConfig) -> str:
    """The workers' ``--lifetime``: as set, or the walltime less :data:`LIFETIME_MARGIN_S` (at least a minute)."""
    if config.lifetime:
        return config.lifetime
    seconds = max(60, walltime_seconds(config.walltime) - LIFETIME_MARGIN_S)
    return f"{seconds // 60}m"


def cluster_arguments(config: SlurmConfig) -> dict[str, Any]:
    """The keyword arguments of ``SLURMCluster`` for ``config``."""
    if config.jobs < 1 or config.cores < 1:
        raise ConfigError("slurm.jobs and slurm.cores must be at least 1")
    processes = 1 if config.gpu else (config.processes or config.cores)
    if config.gpu and config.processes > 1:
        raise ConfigError("slurm.gpu=true runs one worker process per GPU job: raise slurm.jobs for more GPUs")
    if processes > config.cores:
        raise ConfigError(f"slurm.processes={processes} is more than slurm.cores={config.cores}")
    worker_args = ["--lifetime", lifetime(config), "--lifetime-stagger", config.lifetime_stagger]
    directives = list(config.job_extra)
    if config.gpu:
        worker_args += ["--resources", "GPU=1"]
        directives.append("--gres=gpu:1")
    arguments: dict[str, Any] = {
        "cores": processes,  # Dask threads of the job (one per process); the job books slurm.cores CPUs
        "job_cpu": config.cores,
        "processes": processes,
        "memory": config.memory,
        "walltime": config.walltime,
        "job_extra_directives": directives,
        "worker_extra_args": worker_args,
        "job_script_prologue": list(config.prologue),
        "python": config.python or sys.executable,
        "job_name": "dinolab-curate",
    }
    for name in ("queue", "account", "local_directory", "interface"):
        if getattr(config, name):
            arguments[name] = getattr(config, name)
    return arguments


def slurm_cluster(config: SlurmConfig):
    """A started ``SLURMCluster`` keeping ``config.jobs`` jobs running (the scheduler runs in this process)."""
    cluster = _cluster(config)
    cluster.adapt(minimum_jobs=config.jobs, maximum_jobs=config.jobs)
    return cluster


def job_script(config: SlurmConfig) -> str:
    """The batch script each worker job is submitted with (nothing is submitted: the cluster asks for no jobs)."""
    cluster = _cluster(config, scheduler_options={"host": "127.0.0.1", "dashboard_address": None})
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def _cluster(config: SlurmConfig, **extra: Any):
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ConfigError("--cluster slurm needs dask-jobqueue: pip install 'dinolab[cluster]'") from None
    return SLURMCluster(**cluster_arguments(config), **extra)
