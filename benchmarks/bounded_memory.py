"""Bounded memory: ``curate embed`` (listing, ingest, embed) of a lake ``--factor`` times a worker's memory limit.

Writes a lake of uncompressed BMP images (``side``² × 3 bytes each, all different) totalling
``--factor × --limit`` bytes, then runs ``python -m dinolab.pipelines embed`` on one local worker started with
``--memory-limit LIMIT``, sampling the resident memory of every process of the run (client, nanny,
worker) twice a second. Printed: the lake's size, the limit, the peak RSS of the worker and of the client,
the images embedded, the wall time, and whether Dask restarted or paused the worker (its log lines).

    .venv/bin/python -m benchmarks.bounded_memory --dir /tmp/bounded               # 15 GB lake, 1.5 GB worker
    .venv/bin/python -m benchmarks.bounded_memory --dir /tmp/b --factor 2 --keep
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from dinolab.pipelines.lake_writer import write_big_lake  # the fault test's writer of large distinct images

SAMPLE_SECONDS = 0.5


def peak_rss(process: subprocess.Popen) -> dict[str, int]:
    """Poll the process tree of ``process`` until it ends; peak RSS by role (worker: the largest child)."""
    peaks = {"client": 0, "worker": 0}
    root = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            peaks["client"] = max(peaks["client"], root.memory_info().rss)
            for child in root.children(recursive=True):
                try:
                    peaks["worker"] = max(peaks["worker"], child.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            break
        time.sleep(SAMPLE_SECONDS)
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, required=True, help="scratch folder for the lake and the run")
    parser.add_argument("--limit", type=float, default=1.5e9, help="worker memory limit in bytes")
    parser.add_argument("--factor", type=float, default=10.0, help="lake size as a multiple of the limit")
    parser.add_argument("--side", type=int, default=1448, help="image side in pixels")
    parser.add_argument("--keep", action="store_true", help="keep the lake and the run afterwards")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    lake, out = args.dir / "lake", args.dir / "out"
    count = int(args.factor * args.limit / (args.side * args.side * 3)) + 1
    need = count * args.side * args.side * 3
    if shutil.disk_usage(args.dir.parent if not args.dir.exists() else args.dir).free < 1.1 * need:
        sys.exit(f"bounded_memory: needs {need / 1e9:.1f} GB of free disk under {args.dir}")
    started = time.perf_counter()
    lake_bytes = write_big_lake(lake, count=count, side=args.side)
    write_seconds = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "dinolab.pipelines", "embed", "--lake", str(lake), "--out", str(out), "--workers", "1",
               "--memory-limit", str(int(args.limit)), "--config", "demo", "ingest.partition_size=25"]
    started = time.perf_counter()
    log = args.dir / "run.log"
    with open(log, "w") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
        peaks = peak_rss(process)
    seconds = time.perf_counter() - started
    text = log.read_text()
    from dinolab.curate import tables

    embedded = len(tables.read_table(out, "embeddings")) if process.returncode == 0 else 0
    result = {
        "images": count, "lake_bytes": lake_bytes, "limit_bytes": int(args.limit),
        "lake_over_limit": lake_bytes / args.limit, "peak_worker_rss": peaks["worker"],
        "peak_client_rss": peaks["client"], "embedded": embedded, "seconds": seconds,
        "lake_write_seconds": write_seconds, "returncode": process.returncode,
        "worker_restarted": "restart" in text.lower() or "KilledWorker" in text,
        "worker_paused": "paused" in text.lower(),
    }
    print(f"lake: {count:,} images, {lake_bytes / 1e9:.2f} GB = {result['lake_over_limit']:.1f}× the worker limit "
          f"of {args.limit / 1e9:.2f} GB")
    print(f"ingest + embed: exit {process.returncode}, {embedded:,} images embedded in {seconds:.0f} s")
    print(f"peak RSS: worker {peaks['worker'] / 1e9:.2f} GB ({peaks['worker'] / args.limit:.0%} of its limit), "
          f"client {peaks['client'] / 1e9:.2f} GB; worker restarted: {result['worker_restarted']}, "
          f"paused: {result['worker_paused']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)
    sys.exit(0 if process.returncode == 0 and embedded == count else 1)


if __name__ == "__main__":
    main()
