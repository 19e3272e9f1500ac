"""Memory of a Dask cluster's worker processes while something else drives it: peak RSS per worker and per
step, and worker restarts.

A thread polls every ``interval`` seconds: the scheduler's worker addresses (a restarted worker comes back
under a new address and process), each worker's RSS (psutil, by the pid its worker reported once), and the
tasks each worker is processing, whose keys start with the step's label (``dedup-search-24-units-...``, as
:class:`pipelines.dispatch.DaskExecutor` names them), so each sample is also charged to the step it ran::

    with WorkerMemory(client, extra={"client": cli.pid}) as memory:
        cli.wait()
    memory.summary()   # {"workers": {...}, "steps": {...}, "restarts": 0, ...}
"""

from __future__ import annotations

import os
import re
import threading
import time

import psutil
from distributed import Client

_UNITS = re.compile(r"-\d+-(units|partitions)$")
_KEY = re.compile(r"^(?P<label>.+)-[0-9a-f]{8}-\d+$")


def step_of(key: str) -> str:
    """``dedup search`` for a task key ``dedup-search-24-units-<run>-<number>`` (its label without the counts)."""
    found = _KEY.match(str(key))
    label = found.group("label") if found else str(key)
    return _UNITS.sub("", label).replace("-", " ", 1)


def peak_rss_bytes() -> int:
    """This process's peak resident set (``VmHWM``), in bytes (run on each worker with ``client.run``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class WorkerMemory:
    """Polls a cluster's workers (and ``extra`` named pids) from a thread; see the module docstring."""

    def __init__(self, client: Client, interval: float = 0.5, extra: dict[str, int] | None = None) -> None:
        self.client, self.interval = client, interval
        self.extra = dict(extra or {})
        self.pids: dict[str, int] = {}  # worker address -> pid
        self.first: set[str] = set()
        self.peak: dict[str, int] = {}  # worker address (or extra name) -> peak RSS seen
        self.steps: dict[str, dict[str, int]] = {}  # step -> worker address -> peak RSS while running it
        self.baseline: dict[str, int] = {}
        self.busy: dict[str, float] = {}  # step -> worker-seconds seen running it (samples x interval)
        self.cpu: dict[str, float] = {}  # step -> CPU seconds its workers used between samples that saw it
        self._cpu_seen: dict[int, float] = {}
        self.paused: dict[str, int] = {}  # worker address -> samples that found it paused (Dask's 80 % threshold)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-memory", daemon=True)

    def __enter__(self) -> "WorkerMemory":
        self._refresh()
        self.first = set(self.pids)
        self.baseline = {address: self._rss(pid) for address, pid in self.pids.items()}
        for pid in self.pids.values():
            self._cpu_delta(pid)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def watch(self, name: str, pid: int) -> None:
        """Also sample process ``pid`` (e.g. the client command) under ``name``."""
        self.extra[name] = pid

    def _cpu_delta(self, pid: int) -> float:
        """CPU seconds (user + system) process ``pid`` used since the last call."""
        try:
            times = psutil.Process(pid).cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return 0.0
        total = times.user + times.system
        delta, self._cpu_seen[pid] = total - self._cpu_seen.get(pid, total), total
        return delta

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            return psutil.Process(pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return 0

    def _refresh(self) -> None:
        """Learn the pid of every worker address not seen before."""
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        for address, info in workers.items():
            self.paused[address] = self.paused.get(address, 0) + (info.get("status") == "paused")
        new = sorted(set(workers) - set(self.pids))
        if new:
            self.pids.update(self.client.run(os.getpid, workers=new, on_error="ignore"))

    def _loop(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.interval):
            try:
                self._refresh()
                processing = self.client.processing()
            except Exception:  # a worker restarting, the scheduler closing: the next sample will tell
                continue
            self.samples += 1
            now = time.monotonic()
            elapsed, last = now - last, now
            for address, pid in self.pids.items():
                rss, cpu = self._rss(pid), self._cpu_delta(pid)
                self.peak[address] = max(self.peak.get(address, 0), rss)
                running = {step_of(key) for key in processing.get(address, ())}
                for step in running:
                    self.busy[step] = self.busy.get(step, 0.0) + elapsed
                    self.cpu[step] = self.cpu.get(step, 0.0) + cpu / len(running)
                    per_step = self.steps.setdefault(step, {})
                    per_step[address] = max(per_step.get(address, 0), rss)
            for name, pid in self.extra.items():
                self.peak[name] = max(self.peak.get(name, 0), self._rss(pid))

    def restarts(self) -> int:
        """Worker processes that appeared after the first ones (each restart brings a new address and pid)."""
        return len(set(self.pids) - self.first)

    def summary(self) -> dict:
        """Peak and baseline RSS per worker (bytes); per step the largest peak over workers, the worker-seconds it
        was seen running and the CPU seconds used meanwhile (both to the sampling interval); restarts."""
        high_water = self.client.run(peak_rss_bytes, on_error="ignore")
        workers = {address: {"pid": pid, "baseline": self.baseline.get(address), "peak_polled": self.peak.get(address, 0),
                             "peak_hwm": high_water.get(address) if isinstance(high_water.get(address), int) else None}
                   for address, pid in self.pids.items()}
        steps = {step: max(found.values()) for step, found in self.steps.items()}
        busy = {step: round(seconds, 1) for step, seconds in self.busy.items()}
        cpu = {step: round(seconds, 1) for step, seconds in self.cpu.items()}
        return {"workers": workers, "steps": steps, "busy_seconds": busy, "cpu_seconds": cpu,
                "extra": {name: self.peak.get(name, 0) for name in self.extra},
                "restarts": self.restarts(), "paused_samples": sum(self.paused.values()), "samples": self.samples,
                "interval_s": self.interval}
