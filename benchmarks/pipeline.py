"""Curation pipeline throughput: the stage functions in a plain loop vs ``curate run`` on 1 and 2 Dask workers.

One lake of real images is written once: ``--images`` pool images (Fashion-MNIST training images as PNG
plus ``--photos`` JPEG crops of the scikit-image sample photos) and a curated set of ``--curated`` other
Fashion-MNIST images. Then, each in a fresh output folder and in this order:

(a) **loop**: ``pipelines.run.run_curation`` with the in-process executor (``LoopExecutor``): every unit
    of every stage's steps called in this process, in stage order (the embedder built once);
(b) **1 worker**: what ``curate run --workers 1`` does (``pipelines.cli.execute``): ``connect(workers=1)``,
    then ``run_curation`` with the Dask executor; per-stage seconds are read from the
    ``OUT/timings.json`` the pipeline writes (they exclude cluster start-up, reported separately);
(c) **2 workers**: the same with ``connect(workers=2)``.

(a) runs single-threaded, as one Dask worker does: ``torch.set_num_threads(1)`` and the environment
Dask's nanny gives its workers (``OMP/MKL/OPENBLAS_NUM_THREADS=1``, which also size faiss's and Arrow's
pools, and ``MALLOC_TRIM_THRESHOLD_``; the script re-executes itself once to have them from the start),
so (a) and one worker do the same work per process. Every run gets an emptied output folder, and the
outputs of all runs are checked to be identical (tables, embedding vectors, byte-identical shards).

Printed: per stage images in, seconds and images/s of (a), (b), (c), and the images/s ratios (b)/(a) and
(c)/(b) (inverse time ratios), per stage and for the parallel stages (ingest, embed, shard), the global
ones, the whole pipeline (listing + stages) and end to end (with cluster start-up and shutdown); then,
from Dask's task stream, how much of each stage's wall time the workers spent computing; then the targets,
(b)/(a) >= 0.90 (1 worker within 10% of the loop) and (c)/(b) >= 1.70 (2 workers), met or not. The global
stages (dedup, cluster, sample) run as steps of many tasks; a stage of one task (the report) has a (c)/(b)
of ~1 by design, and such stages bound the whole pipeline's (Amdahl, printed). A probe before and after the runs says how much faster two
processes of a CPU-bound loop run than one on this machine at that time (2.0 on two idle cores): on a
shared machine that, not the pipeline, can be what caps (c)/(b).

    .venv/bin/python -m benchmarks.pipeline                    # 10,000 pool images
    .venv/bin/python -m benchmarks.pipeline --images 3000 --json results.json
"""

from __future__ import annotations

import os
import sys

# The environment Dask's nanny gives every worker process (``distributed.nanny.pre-spawn-environ``, checked
# against Dask's config in ``check_thread_settings``). Thread pools read it when numpy/torch/faiss/pyarrow
# load, glibc's malloc when the process starts: so the script re-executes itself once with it set.
WORKER_ENVIRON = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                  "MALLOC_TRIM_THRESHOLD_": "65536"}
if __name__ == "__main__" and any(os.environ.get(k) != v for k, v in WORKER_ENVIRON.items()):
    os.environ.update(WORKER_ENVIRON)
    os.execv(sys.executable, [sys.executable, "-m", __spec__.name, *sys.argv[1:]])

import argparse  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from distributed import get_task_stream  # noqa: E402
from rich.console import Console  # noqa: E402

from dinolab.curate import stages, tables  # noqa: E402
from dinolab.curate.lakes.sets import ImageSet, files_table, name_sets  # noqa: E402
from dinolab.pipelines.cluster import connect  # noqa: E402
from dinolab.pipelines.lake_writer import write_fashion_lake  # noqa: E402
from dinolab.pipelines.dispatch import DaskExecutor, LoopExecutor  # noqa: E402
from dinolab.pipelines.run import run_curation  # noqa: E402
from dinolab.schemas.config import PipelineConfig, load_config  # noqa: E402
from dinolab.schemas.tables import time_columns  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "demo.yaml"
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "cat", "moon", "page", "brick", "grass", "gravel",
          "coins", "text", "clock", "immunohistochemistry", "hubble_deep_field", "motorcycle", "retina")
PARALLEL = ("ingest", "embed", "shard")
GLOBAL = ("dedup", "cluster", "sample", "report")
MODES = {"a": "loop (1 process)", "b": "curate run, 1 worker", "c": "curate run, 2 workers"}
TARGET_B_OVER_A = 0.90
TARGET_C_OVER_B = 1.70
COMPARED_TABLES = ("images", "embeddings", "duplicates", "clusters", "selection", "shards")


# -- the lake ---------------------------------------------------------------------------------------------


def photo_arrays() -> list[np.ndarray]:
    import skimage.data

    arrays = []
    for name in PHOTOS:
        array = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
        arrays.append(np.asarray(array))
    return arrays


def write_photo_crops(folder: Path, count: int, seed: int) -> None:
    """``count`` JPEG crops (side 48..256, random place) of the scikit-image photos, some downscaled."""
    rng = np.random.default_rng(seed)
    photos = photo_arrays()
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(48, min(256, *photo.shape[:2]) + 1))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        if rng.random() < 0.3:
            crop = crop.resize((max(32, side // 2),) * 2, Image.Resampling.BICUBIC)
        crop.save(folder / f"photo_{i:05d}.jpg", quality=90)


def write_lake(root: Path, images: int, photos: int, curated: int, seed: int = 0) -> dict[str, Path]:
    """``root/pool`` (``images - photos`` Fashion-MNIST PNGs + ``photos`` JPEG crops), ``root/curated``."""
    fashion = images - photos
    if fashion < 0:
        raise SystemExit("--photos must not exceed --images")
    try:
        folders = write_fashion_lake(root, fashion, curated, digits=5)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    write_photo_crops(folders["pool"], photos, seed)
    return folders


def image_sets(folders: dict[str, Path]) -> list[ImageSet]:
    taken: set[str] = set()
    return name_sets([str(folders["pool"])], "pool", taken) + name_sets([str(folders["curated"])], "curated", taken)


# -- (a) the plain loop, (b), (c) the Dask pipeline: the same ``run_curation``, two executors ---------------


def run_loop(out: Path, sets: list[ImageSet], config: PipelineConfig) -> dict:
    """(a): ``run_curation`` with the in-process executor (every unit called in this process, in order)."""
    torch.set_num_threads(1)
    begin = time.perf_counter()
    listing = files_table(sets, config.ingest.partition_size)
    listed = time.perf_counter() - begin
    console = Console(file=io.StringIO(), highlight=False)
    run_curation(out, sets, config, nullcontext(LoopExecutor(console)), console, holder="benchmarks.pipeline (a)",
                 listing=listing)
    return {"listing": listed, "startup": 0.0, "end_to_end": time.perf_counter() - begin,
            "stages": {name: record for name, record in stages.timings(out).items() if name in stages.ORDER}}


def run_dask(out: Path, sets: list[ImageSet], config: PipelineConfig, workers: int) -> dict:
    """What ``curate run --workers N`` does (``pipelines.cli.execute``), timed piece by piece."""
    begin = time.perf_counter()
    listing = files_table(sets, config.ingest.partition_size)
    listed = time.perf_counter() - begin
    console = Console(file=io.StringIO(), highlight=False)  # progress lines off the benchmark's output
    up = time.perf_counter()
    with connect(workers=workers) as client:
        executor = DaskExecutor(client, console)  # loads the stage code on the workers
        startup = time.perf_counter() - up
        with get_task_stream(client) as stream:
            run_curation(out, sets, config, nullcontext(executor), console,
                         holder=f"benchmarks.pipeline {workers} workers", listing=listing)
        shutdown_start = time.perf_counter()
    shutdown = time.perf_counter() - shutdown_start
    timings = stages.timings(out)
    return {"listing": listed, "startup": startup, "shutdown": shutdown, "end_to_end": time.perf_counter() - begin,
            "stages": {name: timings[name] for name in stages.ORDER}, "work": task_work(stream.data)}


def task_work(records: list[dict]) -> dict[str, dict]:
    """Per stage, from Dask's task stream: seconds the workers spent computing its tasks, in all and per worker."""
    work: dict[str, dict] = {name: {"compute": 0.0, "per_worker": {}} for name in stages.ORDER}
    for record in records:
        stage = str(record["key"]).split("-")[0]
        if stage not in work:
            continue
        seconds = sum(s["stop"] - s["start"] for s in record["startstops"] if s["action"] == "compute")
        work[stage]["compute"] += seconds
        per_worker = work[stage]["per_worker"]
        per_worker[record["worker"]] = per_worker.get(record["worker"], 0.0) + seconds
    return {name: {"compute": entry["compute"], "busiest": max(entry["per_worker"].values(), default=0.0),
                   "workers": len(entry["per_worker"])} for name, entry in work.items()}


# -- checks and numbers ---------------------------------------------------------------------------------------


def fingerprint(out: Path) -> dict[str, str]:
    """SHA-256 of every compared table (its rows, less the ``*_at`` times of writing) and of every file under
    ``shards/``."""
    prints = {}
    for name in COMPARED_TABLES:
        table = tables.read_table(out, name).drop_columns(time_columns(name))
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="none")
        prints[f"table {name}"] = hashlib.sha256(sink.getvalue()).hexdigest()
    matrices = [tables.read_array(out, "embeddings", p) for p in sorted(tables.done_parts(out, "embeddings"))]
    vectors = b"".join(np.ascontiguousarray(matrix).tobytes() for matrix in matrices)
    prints["embedding vectors"] = hashlib.sha256(vectors).hexdigest()
    for path in sorted((out / stages.SHARD_DIR).rglob("*")):
        if path.is_file():
            prints[f"file {path.relative_to(out)}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return prints


def compare_outputs(folders: dict[str, Path]) -> list[str]:
    """Differences between the outputs (empty: identical)."""
    reference_mode, reference = next(iter(folders.items()))
    expected = fingerprint(reference)
    problems = []
    for mode, folder in list(folders.items())[1:]:
        found = fingerprint(folder)
        for key in sorted(set(expected) | set(found)):
            if expected.get(key) != found.get(key):
                problems.append(f"{mode} differs from {reference_mode}: {key}")
    return problems


def stage_images(out: Path, lake_files: int) -> dict[str, int]:
    """Images into each stage (the report reads the whole run: counted as the lake's files)."""
    counted = {name: stages.counts(out, name)["images_in"] for name in stages.ORDER}
    return {name: lake_files if value is None else value for name, value in counted.items()}


def median(runs: list[dict], value) -> float:
    """The median over repeated runs of ``value(run)`` (totals are summed per run, then the median taken)."""
    return statistics.median(value(run) for run in runs)


def stage_seconds(names) -> Callable[[dict], float]:
    return lambda run: sum(run["stages"][name]["seconds"] for name in names)


def print_work(runs: dict[str, list[dict]]) -> None:
    """Where (b) and (c) spend a stage's wall time: computing in the workers, or around the tasks."""
    header = (f"{'stage':8} {'(a) s':>6} | {'(b) wall':>8} {'tasks':>6} {'around':>6} | {'(c) wall':>8} {'tasks':>6} "
              f"{'busiest':>7} {'workers':>7}")
    print(header)
    print("-" * len(header))
    for name in stages.ORDER:
        a, b, c = (median(runs[mode], stage_seconds([name])) for mode in MODES)
        work = {mode: {key: median(runs[mode], lambda run: run["work"][name][key])
                       for key in ("compute", "busiest", "workers")} for mode in ("b", "c")}
        wb, wc = work["b"], work["c"]
        print(f"{name:8} {a:6.2f} | {b:8.2f} {wb['compute']:6.2f} {b - wb['compute']:6.2f} | {c:8.2f} "
              f"{wc['compute']:6.2f} {wc['busiest']:7.2f} {wc['workers']:7.0f}")
    slower = task_slowdown(runs)
    print(f"the same tasks computed {slower:.2f}x as long in (c) as in (b) (two at once on this machine): even with "
          f"nothing around the tasks and no idle worker, (c)/(b) would be at most {2 / slower:.2f}")


def task_slowdown(runs: dict[str, list[dict]]) -> float:
    """How much longer the workers computed the same tasks in (c) than in (b) (medians of the per-run totals)."""
    def total(run: dict) -> float:
        return sum(entry["compute"] for entry in run["work"].values())

    return median(runs["c"], total) / median(runs["b"], total)


def rows(runs: dict[str, list[dict]], images: dict[str, int], lake_files: int) -> list[dict]:
    """Table rows: one per stage, then groups; per mode the median seconds over the repeats."""
    def row(label: str, count: int | None, value, **extra) -> dict:
        seconds = {mode: median(found, value) for mode, found in runs.items()}
        return {"label": label, "images": count, **extra, **seconds}

    table = [row("listing (files table)", lake_files, lambda run: run["listing"])]
    for name in stages.ORDER:
        table.append(row(name, images[name], stage_seconds([name]), tasks=runs["c"][0]["stages"][name]["tasks"]))
    table += [
        row("parallel stages (ingest+embed+shard)", lake_files, stage_seconds(PARALLEL), group=True),
        row("global stages (dedup+cluster+sample+report)", lake_files, stage_seconds(GLOBAL), group=True),
        row("whole pipeline (listing + stages)", lake_files,
            lambda run: run["listing"] + stage_seconds(stages.ORDER)(run), group=True),
        row("cluster start-up", None, lambda run: run["startup"], group=True),
        row("end to end (incl. start-up, shutdown)", lake_files, lambda run: run["end_to_end"], group=True),
    ]
    return table


def ratio(numerator: float, denominator: float) -> float | None:
    """Images/s ratio of two modes = inverse ratio of their seconds."""
    return denominator / numerator if numerator > 0 and denominator > 0 else None


def _fmt(value, spec: str) -> str:
    """``value`` formatted by ``spec`` (whose leading digits are the width), or a dash as wide."""
    width = int("".join(c for c in spec.split(".")[0] if c.isdigit()) or 0)
    return ("-" if value is None else format(value, spec)).rjust(width)


def print_table(table: list[dict]) -> None:
    modes = " | ".join(f"{'(' + mode + ') s':>8} {'img/s':>7}" for mode in MODES)
    header = f"{'stage':44} {'images':>7} {'tasks':>5} | {modes} | {'(b)/(a)':>7} {'(c)/(b)':>7}"
    print(header)
    print("-" * len(header))
    for row in table:
        if row.get("group") and not table[table.index(row) - 1].get("group"):
            print("-" * len(header))
        cells = []
        for mode in MODES:
            rate = row["images"] / row[mode] if row["images"] and row[mode] > 0 else None
            cells.append(f"{row[mode]:8.2f} {_fmt(rate, '7,.0f')}")
        b_a = None if row["label"] == "cluster start-up" else ratio(row["b"], row["a"])
        c_b = ratio(row["c"], row["b"])
        note = "  <- one task: cannot scale" if row.get("tasks") == 1 else ""
        print(f"{row['label']:44} {_fmt(row['images'], '7,')} {_fmt(row.get('tasks'), '5')} | " + " | ".join(cells)
              + f" | {_fmt(b_a, '7.2f')} {_fmt(c_b, '7.2f')}{note}")


def verdicts(table: list[dict]) -> list[str]:
    """Targets met or not, on the groups they are about; the Amdahl bound of (c)/(b) for the whole pipeline."""
    by_label = {row["label"]: row for row in table}
    lines = []

    def verdict(label: str, value: float | None, target: float, what: str) -> None:
        met = value is not None and value >= target
        lines.append(f"  {'MET    ' if met else 'NOT MET'} {what} >= {target:.2f} on {label}: {_fmt(value, '.2f')}")

    for label in ("whole pipeline (listing + stages)", "parallel stages (ingest+embed+shard)",
                  "end to end (incl. start-up, shutdown)"):
        row = by_label[label]
        verdict(label, ratio(row["b"], row["a"]), TARGET_B_OVER_A, "(b)/(a)")
    for label in ("parallel stages (ingest+embed+shard)", "whole pipeline (listing + stages)",
                  "end to end (incl. start-up, shutdown)"):
        row = by_label[label]
        verdict(label, ratio(row["c"], row["b"]), TARGET_C_OVER_B, "(c)/(b)")
    stage_rows = [by_label[name] for name in stages.ORDER]
    serial = sum(row["b"] for row in stage_rows if row.get("tasks") == 1) + by_label["listing (files table)"]["b"]
    parallel = sum(row["b"] for row in stage_rows if row.get("tasks") != 1)
    bound = (serial + parallel) / (serial + parallel / 2)
    lines.append(f"  Amdahl: with (b)'s one-task stages + the client's listing ({serial:.1f} s) serial and the "
                 f"stages of many tasks ({parallel:.1f} s) halved, the whole pipeline's (c)/(b) is at most {bound:.2f}")
    return lines


# -- what the machine gives two processes right now ---------------------------------------------------------


def _spin(ready, results, count: int) -> None:
    """In a child process: wait until every child is ready, then time a fixed pure-Python loop."""
    ready.wait()
    begin = time.perf_counter()
    total = 0
    for i in range(count):
        total += i * i
    results.put(time.perf_counter() - begin)


def _spin_together(processes: int, count: int) -> float:
    import multiprocessing

    context = multiprocessing.get_context("fork")  # the children only run the loop: no imports to wait for
    ready, results = context.Barrier(processes), context.Queue()
    children = [context.Process(target=_spin, args=(ready, results, count)) for _ in range(processes)]
    for child in children:
        child.start()
    times = [results.get() for _ in children]
    for child in children:
        child.join()
    return max(times)


def parallel_capacity(count: int = 30_000_000) -> float:
    """Throughput of 2 processes running the same CPU-bound loop at once, over 1 alone (2.0 on 2 idle cores)."""
    alone = _spin_together(1, count)
    together = _spin_together(2, count)
    alone = (alone + _spin_together(1, count)) / 2
    return 2 * alone / together


# -- main -------------------------------------------------------------------------------------------------------


def check_thread_settings() -> str:
    import dask.config

    spawn = {k: str(v) for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ") or {}).items()}
    differ = {k: (v, spawn.get(k)) for k, v in WORKER_ENVIRON.items() if spawn.get(k) != v}
    return "" if not differ else f"WARNING: Dask's worker environment differs from (a)'s: {differ}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000, help="pool images (Fashion-MNIST PNGs + photo crops)")
    parser.add_argument("--photos", type=int, default=1_000, help="of those, JPEG crops of scikit-image photos")
    parser.add_argument("--curated", type=int, default=300, help="curated set: other Fashion-MNIST images")
    parser.add_argument("--embedder", default="pixels", help="embed.embedder (pixels, an architecture, weights)")
    parser.add_argument("--partition-size", type=int, default=500, help="ingest.partition_size: files per task")
    parser.add_argument("--shard-samples", type=int, default=200, help="shard.max_samples: gives several shard tasks")
    parser.add_argument("--repeats", type=int, default=1, help="run (a), (b), (c) this many times; report medians")
    parser.add_argument("--out", type=Path, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("overrides", nargs="*", help="more config overrides section.key=value (after the above)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    scratch = args.out or Path(tempfile.mkdtemp(prefix="dinolab-pipeline-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        run_benchmark(args, scratch.resolve())
    finally:
        if args.out is None:
            shutil.rmtree(scratch, ignore_errors=True)


def fresh(folder: Path) -> Path:
    """``folder``, emptied: a run must never resume (and time) what an earlier run left in a reused ``--out``."""
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def run_benchmark(args: argparse.Namespace, scratch: Path) -> None:
    overrides = [f"ingest.partition_size={args.partition_size}", f"shard.max_samples={args.shard_samples}",
                 f"embed.embedder={args.embedder}", "embed.device=cpu", *args.overrides]
    config = load_config(CONFIG, overrides)
    start = time.perf_counter()
    folders = write_lake(fresh(scratch / "lake"), args.images, args.photos, args.curated)
    sets = image_sets(folders)
    lake_files = args.images + args.curated
    print(f"lake: {args.images - args.photos:,} Fashion-MNIST PNGs + {args.photos:,} scikit-image photo crops (JPEG) "
          f"in the pool, {args.curated:,} curated; written in {time.perf_counter() - start:.1f} s")
    print(f"config: {CONFIG.name} + {' '.join(overrides)}")
    print(f"cores: {len(os.sched_getaffinity(0))}; (a) single-threaded like one Dask worker: torch.set_num_threads(1), "
          f"{', '.join(f'{k}={v}' for k, v in WORKER_ENVIRON.items() if 'THREADS' in k)}")
    if warning := check_thread_settings():
        print(warning)
    capacity = [parallel_capacity()]
    print(f"machine: 2 processes of a CPU-bound loop run {capacity[0]:.2f}x as fast as 1 (2.00 on 2 idle cores)")
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    outputs: dict[str, Path] = {}
    for repeat in range(args.repeats):
        for mode, label in MODES.items():
            out = fresh(scratch / f"out-{repeat}-{mode}")
            load = os.getloadavg()[0]
            if mode == "a":
                result = run_loop(out, sets, config)
            else:
                result = run_dask(out, sets, config, workers=1 if mode == "b" else 2)
            runs[mode].append(result)
            outputs[f"({mode}) #{repeat}"] = out
            print(f"  run {repeat + 1}/{args.repeats} ({mode}) {label}: {result['end_to_end']:.1f} s end to end "
                  f"(load average before: {load:.2f})", flush=True)
    capacity.append(parallel_capacity())
    print(f"machine after the runs: 2 processes {capacity[1]:.2f}x as fast as 1; "
          f"(c)/(b) cannot exceed what the machine gives")
    problems = compare_outputs(outputs)
    print(f"outputs: {'identical' if not problems else 'DIFFERENT'} across {len(outputs)} runs "
          f"({', '.join(COMPARED_TABLES)} tables, embedding vectors, every file under shards/ byte for byte)")
    for problem in problems:
        print(f"  {problem}")
    images = stage_images(outputs["(a) #0"], lake_files)
    table = rows(runs, images, lake_files)
    print()
    print(f"per stage: images in, seconds{' (median of ' + str(args.repeats) + ')' if args.repeats > 1 else ''}, "
          f"images/s; ratios are images/s ratios; tasks as the Dask pipeline runs them")
    print_table(table)
    print()
    print("where the time goes: 'tasks' = seconds the workers spent computing the stage's tasks (Dask's task stream),")
    print("'around' = (b)'s wall minus that (submitting, scheduling, results, the pipeline's own reads of the tables),")
    print("'busiest' = the most any one worker computed in (c) (the floor for (c)'s wall)")
    print_work(runs)
    print()
    print("targets:")
    for line in verdicts(table):
        print(line)
    print(f"  the machine gave 2 processes {min(capacity):.2f}-{max(capacity):.2f}x the speed of 1 (probes before and "
          f"after): (c)/(b) can only reach 1.70 when that is near 2.00")
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "overrides": overrides, "parallel_capacity": capacity, "outputs_identical": not problems,
            "problems": problems, "table": table, "runs": runs, "targets": verdicts(table),
        }, indent=1))
        print(f"results: {args.json}")


if __name__ == "__main__":
    main()
