"""Benchmark jobs in fresh processes: wall time, CPU time and peak memory of one piece of work each.

A benchmark passes its own module name and a JSON job to :func:`run_job`, which runs
``python -m MODULE --job JOB`` and reads back the last line it prints (the output of :func:`timed`)::

    result = run_job(__spec__.name, {"op": "dedup", "count": 100_000})
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable


def synthetic(count: int, dim: int, seed: int = 0):
    """``count`` unit Gaussian ``dim``-vectors (float32), the last 1% noisy copies of others: (data, sources, targets)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    data = rng.standard_normal((count, dim), dtype=np.float32)
    copies = count // 100
    sources = rng.choice(count - copies, size=copies, replace=False)
    targets = np.arange(count - copies, count)
    data[targets] = data[sources] + 0.1 * rng.standard_normal((copies, dim), dtype=np.float32)
    return data, sources, targets


def peak_memory_gib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime  # children: waited-for workers


def timed(job: dict, work: Callable[[], dict]) -> dict:
    """``job`` with the wall time, CPU time and peak memory of ``work()`` added to what it returns."""
    start, cpu_start = time.perf_counter(), cpu_seconds()
    extra = work()
    return {**job, "seconds": round(time.perf_counter() - start, 3), "cpu_seconds": round(cpu_seconds() - cpu_start, 3),
            "peak_gib": round(peak_memory_gib(), 2), **extra}


def run_job(module: str, job: dict, env: dict[str, str] | None = None) -> dict | None:
    """Run ``python -m module --job JOB`` in a fresh process; its last stdout line parsed, or None (stderr shown)
    if it failed. ``module``: the benchmark's ``__spec__.name`` (e.g. ``benchmarks.scale``)."""
    result = subprocess.run([sys.executable, "-m", module, "--job", json.dumps(job)], capture_output=True, text=True,
                            check=False, env=None if env is None else {**os.environ, **env})
    if result.returncode:
        print(f"failed: {job}\n{result.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])
