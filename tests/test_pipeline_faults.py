"""Fault tolerance with real processes: the client SIGKILLed mid-embed, a Dask worker SIGKILLed mid-stage,
and a worker whose memory limit is smaller than the lake. Each run must end with the same tables and
byte-identical shards as an uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from distributed import Client

from dinolab.curate import tables
from dinolab.schemas.tables import time_columns
from lakes import write_big_lake, write_lake

BIN = Path(sys.executable).parent
# a real backbone makes the embed stage long enough to be interrupted (random ViT-S weights, seeded)
SETTINGS = ["--config", "demo", "--embedder", "vit_small", "embed.image_size=112", "embed.batch_size=8",
            "ingest.partition_size=8", "shard.max_samples=6"]
COMPARED = ("files", "images", "embeddings", "duplicates", "clusters", "selection", "shards")


def curate_command(folders: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dinolab.pipelines", "run", "--lake", str(folders["pool"]), "--curated",
            str(folders["curated"]), "--eval", str(folders["eval"]), "--out", str(out), *SETTINGS, *extra]


def start(command: list[str], log: Path) -> subprocess.Popen:
    """A process in its own session (so it and every process it starts can be killed together)."""
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def wait_for(condition, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process ended (code {process.returncode}) before the condition held")
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def embed_parts(out: Path) -> int:
    return len(tables.done_parts(out, "embeddings"))


def assert_same_run(out: Path, reference: Path) -> None:
    for name in COMPARED:  # every value but when each row was written
        times = time_columns(name)
        assert tables.read_table(out, name).drop_columns(times).equals(
            tables.read_table(reference, name).drop_columns(times)), name
    for partition in sorted(tables.done_parts(reference, "embeddings")):
        np.testing.assert_array_equal(tables.read_array(out, "embeddings", partition),
                                      tables.read_array(reference, "embeddings", partition))
    shards = sorted(p.name for p in (reference / "shards").iterdir())
    assert sorted(p.name for p in (out / "shards").iterdir()) == shards
    for name in shards:
        assert (out / "shards" / name).read_bytes() == (reference / "shards" / name).read_bytes(), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The lake and one uninterrupted run over it."""
    root = tmp_path_factory.mktemp("faults")
    folders = write_lake(root, pool=100, curated=10, evals=4)
    out = root / "reference"
    result = subprocess.run(curate_command(folders, out, "--workers", "2"), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    partitions = len(tables.done_parts(out, "files"))
    assert partitions >= 10 and len(list((out / "shards").glob("*.tar"))) >= 2
    return folders, out, partitions


def test_client_killed_mid_embed_then_rerun_gives_the_same_output(reference, tmp_path):
    folders, reference_out, partitions = reference
    out = tmp_path / "out"
    client = start(curate_command(folders, out, "--workers", "2"), tmp_path / "first.log")
    try:
        wait_for(lambda: 1 <= embed_parts(out), timeout=240, process=client)
    finally:
        kill_group(client)
    assert embed_parts(out) < partitions, "the embed stage finished before the kill; nothing was interrupted"
    assert not (out / "tables" / "duplicates").exists()
    result = subprocess.run(curate_command(folders, out, "--workers", "2"), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ingest: done already" in result.stdout
    assert_same_run(out, reference_out)


@contextlib.contextmanager
def scheduler_with_workers(tmp_path: Path, count: int = 2) -> Iterator[tuple[str, dict[str, subprocess.Popen], list]]:
    """A ``dask scheduler`` and ``count`` ``dask worker`` processes (named ``w0``...): (address, workers by
    name, every process started, to which a test appends its own); all killed on exit."""
    scheduler_file = tmp_path / "scheduler.json"
    processes = [start([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                        "--scheduler-file", str(scheduler_file)], tmp_path / "scheduler.log")]
    try:
        wait_for(scheduler_file.exists, timeout=60)
        time.sleep(0.5)
        address = json.loads(scheduler_file.read_text())["address"]
        workers = {f"w{i}": start([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard",
                                   "--name", f"w{i}"], tmp_path / f"worker{i}.log") for i in range(count)}
        processes += workers.values()
        yield address, workers, processes
    finally:
        for process in reversed(processes):
            kill_group(process)


def run_on(address: str, folders: dict[str, Path], tmp_path: Path, processes: list) -> tuple[Path, subprocess.Popen]:
    """``curate run`` on the scheduler at ``address`` into ``tmp_path/out``, started (not waited for)."""
    out = tmp_path / "out"
    client = start(curate_command(folders, out, "--scheduler", address), tmp_path / "client.log")
    processes.append(client)
    return out, client


def assert_completes_as(reference_out: Path, out: Path, client: subprocess.Popen, log: Path) -> None:
    assert client.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert_same_run(out, reference_out)


def test_worker_killed_mid_stage_the_run_still_completes_identically(reference, tmp_path):
    folders, reference_out, partitions = reference
    with scheduler_with_workers(tmp_path) as (address, workers, processes):
        out, client = run_on(address, folders, tmp_path, processes)
        wait_for(lambda: 1 <= embed_parts(out), timeout=240, process=client)
        kill_group(workers["w0"])
        assert embed_parts(out) < partitions, "the embed stage finished before the kill"
        assert_completes_as(reference_out, out, client, tmp_path / "client.log")


GLOBAL_STAGES = ("dedup", "cluster", "sample", "shard")


def test_worker_killed_while_it_runs_a_global_stage_the_rerun_gives_identical_tables_and_shards(reference, tmp_path):
    """The scheduler is watched for a worker running a task of a global stage; that worker is killed then."""
    folders, reference_out, _ = reference
    with scheduler_with_workers(tmp_path) as (address, workers, processes):
        out, client = run_on(address, folders, tmp_path, processes)
        with Client(address, timeout=30) as watcher:
            def running_global() -> str | None:
                names = {a: w["name"] for a, w in watcher.scheduler_info(n_workers=-1)["workers"].items()}
                for worker, keys in watcher.processing().items():
                    if any(str(key).split("-")[0] in GLOBAL_STAGES for key in keys):
                        return names.get(worker)
                return None

            found: list[str | None] = []
            wait_for(lambda: found.append(running_global()) or found[-1] is not None, timeout=300, process=client)
            kill_group(workers[found[-1]])
        assert not (out / "shards" / "index.json").exists(), "the run finished before the kill"
        assert_completes_as(reference_out, out, client, tmp_path / "client.log")


def test_a_worker_with_a_small_memory_limit_embeds_a_larger_lake(tmp_path):
    # a worker holding torch and faiss already uses about 1.2 GB after its first task, and Dask pauses a worker at
    # 80 % of its limit: at 1.5 GB it would stay paused; 2 GB leaves room for one partition of large images
    limit, count = 2_000_000_000, 340
    if shutil.disk_usage(tmp_path).free < 3 * limit:
        pytest.skip(f"needs {3 * limit / 1e9:.1f} GB of free disk for the lake")
    lake_bytes = write_big_lake(tmp_path / "big", count=count, side=1448)
    assert lake_bytes > limit
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dinolab.pipelines", "embed", "--lake", str(tmp_path / "big"), "--out", str(out),
               "--workers", "1", "--memory-limit", str(limit), "--config", "demo", "ingest.partition_size=25"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert len(tables.read_table(out, "embeddings")) == count
    assert "restart" not in result.stderr.lower() and "KilledWorker" not in result.stderr


def test_two_runs_on_one_out_one_proceeds_the_other_names_the_holder_and_a_killed_holder_is_recovered(reference, tmp_path):
    """docs/curation.md, "What the output folder guarantees": one run holds OUT; a SIGKILLed holder's lock goes with it."""
    folders, reference_out, partitions = reference
    out = tmp_path / "out"
    lock = out / ".curate-lock"
    first = start(curate_command(folders, out, "--workers", "2"), tmp_path / "first.log")
    try:
        wait_for(lambda: lock.is_file() and lock.stat().st_size > 0, timeout=120, process=first)
        second = subprocess.run(curate_command(folders, out, "--workers", "1"), capture_output=True, text=True,
                                timeout=300)
        assert first.poll() is None, "the first run ended before the second one tried"
        assert second.returncode == 2, second.stdout + second.stderr
        [line] = second.stderr.splitlines()
        assert line.startswith("curate run: error:") and "is in use by another run" in line
        assert f"pid {first.pid}," in line and "started 20" in line and f"--out {out}" in line and "host " in line
        wait_for(lambda: 1 <= embed_parts(out), timeout=240, process=first)
    finally:
        kill_group(first)
    assert embed_parts(out) < partitions, "the first run finished before the kill"
    result = subprocess.run(curate_command(folders, out, "--workers", "2"), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_same_run(out, reference_out)
