"""Curation at scale through the real command: ``curate sample`` on a synthetic lake of precomputed embeddings,
on 2 local worker processes with a memory limit each, measured from outside.

1. **Lake.** ``--size`` 256-d float16 embeddings (:mod:`benchmarks._shared.mixture_lake`): a Gaussian mixture
   on the unit sphere (one component per 1,000 rows; members of a component ~0.25 cosine apart), 1 % planted
   near-copies of random pool rows (~0.9 cosine to their source), and ``--queries`` curated queries drawn from
   a tenth of the components, written as a second precomputed set given with ``--curated``. The answers
   (component of every row, the planted pairs, the queries' components) go to a side file.
2. **Run.** A cluster built as ``curate run --workers 2 --memory-limit 2GiB`` builds its own
   (:func:`pipelines.cluster.connect`: processes, 1 thread each), then the CLI itself in a child process,
   ``python -m dinolab.pipelines sample --lake POOL --curated QUERIES --out OUT --scheduler ADDRESS``, with the
   named config (``lvd``, the paper's settings) and two overrides: ``ingest.partition_size`` = the lake's
   rows per file, ``cluster.ks=[C, C/10]`` for C components (``--set`` adds more). It stops after sample:
   the shard stage needs the images, and the synthetic metadata names none that exist. While it runs a
   thread samples each worker's RSS every ``--interval`` s (psutil), charges each sample to the step whose
   task the worker is running, and counts worker restarts (a restarted worker comes back under a new address).
   Each worker's exact peak (``VmHWM``) is read at the end; time per stage from ``OUT/timings.json``.
3. **Quality**, against the side file:

   - *planted-pair recall*: the share of planted copies whose ``duplicates`` group (the kept image's id)
     is their source's; *largest group*; images removed, and how many of them belong to a planted pair;
   - *cluster purity*: the share of pool images whose level-1 cluster's most common true component is theirs;
   - *selection precision*: the share of selected images whose true component is one the curated queries
     were drawn from (drawing at random gives the *base rate*, about 0.1); *query precision*: the share whose
     component is that of the very query that selected them (``query_key``);
   - images in and out of each stage.

    python -m benchmarks.scale_run --size 100000 --json scale_run.json
    python -m benchmarks.scale_run --size 3000000 --dir /data/scale-run --json scale_run_3m.json

Prints a table, writes everything with ``--json``; ``--dir`` keeps the lake and the output (default: a
temporary folder, removed after).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks._shared.mixture_lake import MixtureLake, read_mixture_lake, write_mixture_lake
from benchmarks._shared.task_memory import Sizes, task_bytes
from benchmarks._shared.worker_memory import WorkerMemory

GIB = 2**30
STAGES = ("ingest", "embed", "dedup", "cluster", "sample")


def _load_stage_code() -> int:
    """What a worker imports before its first task (as the CLI's executor does), then its RSS in bytes."""
    import psutil

    import dinolab.curate.stages  # noqa: F401

    return psutil.Process().memory_info().rss


def _column(out: Path, table: str, columns: list[str]) -> dict[str, np.ndarray]:
    """``columns`` of every part of ``table`` (empty arrays when it has none)."""
    files = sorted((out / "tables" / table).glob("part-*.parquet"))
    if not files:
        return {name: np.zeros(0) for name in columns}
    found = pa.concat_tables([pq.read_table(f, columns=columns) for f in files])
    return {name: found.column(name).to_numpy(zero_copy_only=False) for name in columns}


def _rows(out: Path, table: str) -> int | None:
    files = sorted((out / "tables" / table).glob("part-*.parquet"))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files) if files else None


def stage_counts(out: Path) -> dict[str, tuple[int | None, int | None]]:
    """Images into and out of each stage (as ``curate`` counts them), reading only the columns needed."""
    status = _column(out, "images", ["status"])["status"]
    ok = int((status == "ok").sum()) if len(status) else None
    kept = _column(out, "duplicates", ["kept"])["kept"]
    kept_count = int(kept.sum()) if len(kept) else None
    return {"ingest": (_rows(out, "files"), ok), "embed": (ok, _rows(out, "embeddings")),
            "dedup": (_rows(out, "duplicates"), kept_count), "cluster": (kept_count, _rows(out, "clusters")),
            "sample": (_rows(out, "clusters"), _rows(out, "selection"))}


def _pool_rows(keys: np.ndarray) -> np.ndarray:
    return np.array([int(key) for key in keys], dtype=np.int64)


def quality(out: Path, lake: MixtureLake) -> dict:
    """The planted answers against the ``duplicates``, ``clusters`` and ``selection`` tables."""
    truth = lake.truth()
    labels, copies, sources = truth["labels"], truth["copies"], truth["sources"]
    found: dict = {"planted_pairs": len(copies)}
    duplicates = _column(out, "duplicates", ["key", "group", "kept"])
    if len(duplicates["key"]):
        group = np.full(lake.size, -1, np.int64)
        rows = _pool_rows(duplicates["key"])
        group[rows] = duplicates["group"]
        removed = rows[~duplicates["kept"].astype(bool)]
        planted = np.zeros(lake.size, bool)
        planted[copies] = planted[sources] = True
        found.update(planted_recall=round(float(np.mean(group[copies] == group[sources])), 4) if len(copies) else None,
                     largest_group=int(np.bincount(np.unique(duplicates["group"], return_inverse=True)[1]).max()),
                     removed=len(removed), removed_in_planted_pairs=int(planted[removed].sum()))
    clusters = _column(out, "clusters", ["key", "cluster"])
    if len(clusters["key"]):
        true = labels[_pool_rows(clusters["key"])].astype(np.int64)
        pairs = clusters["cluster"].astype(np.int64) * (int(labels.max()) + 1) + true
        codes, counts = np.unique(pairs, return_counts=True)
        best = {}
        for code, count in zip((codes // (int(labels.max()) + 1)).tolist(), counts.tolist()):
            best[code] = max(best.get(code, 0), count)
        found.update(clusters=len(best), cluster_purity=round(sum(best.values()) / len(true), 4))
    selection = _column(out, "selection", ["key", "query_key"])
    found["base_rate"] = round(float(np.isin(labels, truth["curated_components"]).mean()), 4)
    found["selected"] = len(selection["key"])
    if len(selection["key"]):
        selected = labels[_pool_rows(selection["key"])]
        found["selection_precision"] = round(float(np.isin(selected, truth["curated_components"]).mean()), 4)
        queries = selection["query_key"].tolist()
        if all(key is not None for key in queries):
            of_query = truth["query_labels"][[int(str(key).rsplit("q", 1)[1]) for key in queries]]
            found["query_precision"] = round(float(np.mean(selected == of_query)), 4)
    return found


def run_cli(args: argparse.Namespace, lake: MixtureLake, out: Path, log: Path) -> dict:
    """``curate <until>`` on the lake against a cluster started here; its exit code, times and memory."""
    from dinolab.pipelines.cluster import connect

    overrides = [f"ingest.partition_size={args.file_rows}",
                 f"cluster.ks=[{lake.components}, {max(1, lake.components // 10)}]", *args.set]
    with connect(None, args.workers, args.memory_limit) as client:
        client.run(_load_stage_code)
        command = [sys.executable, "-m", "dinolab.pipelines", args.until, "--lake", str(lake.pool),
                   "--curated", str(lake.curated), "--out", str(out), "--scheduler", client.scheduler.address,
                   "--config", args.config, *overrides]
        print("$ " + " ".join(command[2:]), flush=True)
        start = time.perf_counter()
        with WorkerMemory(client, args.interval) as memory, log.open("w") as stream:
            process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT,
                                       env={**os.environ, "COLUMNS": "160"})
            memory.watch("client", process.pid)
            code = process.wait()
        wall = time.perf_counter() - start
        measured = memory.summary()
    return {"command": ["curate", *command[3:]], "exit_code": code, "wall_seconds": round(wall, 1), "memory": measured,
            "overrides": overrides}


def stage_table(out: Path) -> dict[str, dict]:
    timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").is_file() else {}
    counts = stage_counts(out)
    return {name: {**timings.get(name, {"seconds": None, "tasks": None}), "images_in": counts[name][0],
                   "images_out": counts[name][1]} for name in STAGES}


def run_sizes(args: argparse.Namespace, lake: MixtureLake) -> Sizes:
    """The :class:`Sizes` of this run (the lvd settings the benchmark does not override)."""
    return Sizes(pool=lake.size, partition=args.file_rows, dim=lake.dim, kept=lake.size - lake.copies,
                 clusters=lake.components, queries=lake.queries)


PROJECTED = {"3e6 (this benchmark)": Sizes(pool=3_000_000, partition=100_000),
             "1e7 (this benchmark)": Sizes(pool=10_000_000, partition=100_000),
             "1.2e9 (the paper's pool)": Sizes(pool=1_200_000_000, partition=100_000, kept=1_100_000_000,
                                               clusters=100_000, queries=20_000_000)}
"""Sizes the per-task formulas are evaluated at (lvd settings; the paper's 10^5 clusters and ~2·10^7 curated
queries at 1.2 B)."""


def _gib(value: int | None) -> str:
    return "–" if not value else f"{value / GIB:.2f}"


def _n(value) -> str:
    return "–" if value is None else f"{value:,}"


def report(result: dict) -> str:
    memory, q = result["run"]["memory"], result["quality"]
    lines = [f"curate {result['args']['until']} on {result['lake']['size']:,} x {result['lake']['dim']}-d embeddings, "
             f"{result['args']['workers']} workers x 1 thread, memory limit {result['args']['memory_limit']} each: "
             f"exit code {result['run']['exit_code']}, {result['run']['wall_seconds']} s, "
             f"{memory['restarts']} worker restarts, {memory['paused_samples']} of {memory['samples']} samples found "
             "a worker paused (at 80 % of its limit)", "",
             "| stage | seconds | tasks | worker CPU s | images in | images out | peak RSS of its steps, GiB "
             "(max over workers) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in result["stages"].items():
        mine = [step for step in memory["steps"] if step == name or step.startswith(name + " ")]
        cpu = sum(memory["cpu_seconds"].get(step, 0.0) for step in mine)
        lines.append(f"| {name} | {_n(row['seconds'])} | {_n(row['tasks'])} | {cpu:.1f} | {_n(row['images_in'])} | "
                     f"{_n(row['images_out'])} | {_gib(max((memory['steps'][s] for s in mine), default=None))} |")
    lines += ["", "| worker | baseline GiB (after imports) | peak GiB (polled) | peak GiB (VmHWM) |", "|---|---:|---:|---:|"]
    for address, worker in memory["workers"].items():
        lines.append(f"| {address} (pid {worker['pid']}) | {_gib(worker['baseline'])} | {_gib(worker['peak_polled'])} | "
                     f"{_gib(worker['peak_hwm'])} |")
    lines.append(f"| the `curate` client process | – | {_gib(memory['extra'].get('client'))} | – |")
    formula, base = result["formula"], max(w["baseline"] or 0 for w in memory["workers"].values())
    lines += ["", "| step | worker-seconds running it | CPU seconds | peak RSS GiB while a worker ran it | "
              "baseline + formula GiB (docs/scale.md) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {step} | {memory['busy_seconds'].get(step, 0):.1f} | {memory['cpu_seconds'].get(step, 0):.1f} | "
              f"{_gib(value)} | "
              f"{_gib(base + formula[step]) if step in formula else '–'} |" for step, value in memory["steps"].items()]
    lines += ["", "Per-task bytes above the baseline by the formulas, GiB, at larger pools (partitions of 100,000):", "",
              "| step | " + " | ".join(PROJECTED) + " |", "|---|" + "---:|" * len(PROJECTED)]
    projected = {name: task_bytes(sizes) for name, sizes in PROJECTED.items()}
    for step in formula:
        lines.append(f"| {step} | " + " | ".join(f"{projected[name][step] / GIB:.2f}" for name in PROJECTED) + " |")
    lines += ["", f"planted-pair recall {q.get('planted_recall')} ({q['planted_pairs']:,} pairs), largest group "
              f"{q.get('largest_group')}, removed {_n(q.get('removed'))} (of which in planted pairs "
              f"{_n(q.get('removed_in_planted_pairs'))})",
              f"cluster purity {q.get('cluster_purity')} ({_n(q.get('clusters'))} level-1 clusters)",
              f"selected {q['selected']:,}: selection precision {q.get('selection_precision')} (base rate "
              f"{q['base_rate']}), query precision {q.get('query_precision')}"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000, help="pool embeddings, planted copies included")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=10_000, help="curated queries")
    parser.add_argument("--components", type=int, help="mixture components (default: one per 1,000 rows)")
    parser.add_argument("--file-rows", type=int, default=100_000,
                        help="rows per img_emb file, and ingest.partition_size (one partition per file)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="2GiB", help="per worker process")
    parser.add_argument("--config", default="lvd", help="named config or YAML file of the run")
    parser.add_argument("--set", action="append", default=[], help="more config overrides KEY=VALUE (repeatable)")
    parser.add_argument("--until", default="sample", choices=STAGES, help="last stage (the curate subcommand)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, help="keep the lake and the output here (default: a temporary folder)")
    parser.add_argument("--resume", action="store_true",
                        help="continue a stopped run in --dir: its lake and output are kept, and curate skips "
                             "the steps it finished")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, scratch: Path) -> dict:
    start = time.perf_counter()
    out = scratch / "out"
    if args.resume and (scratch / "lake" / "truth.npz").is_file():  # the lake as written, the output as left
        lake = read_mixture_lake(scratch / "lake", args.dim)
    else:
        lake = write_mixture_lake(scratch / "lake", args.size, args.dim, args.components, queries=args.queries,
                                  file_rows=args.file_rows, seed=args.seed)
        shutil.rmtree(out, ignore_errors=True)
    lake_seconds = time.perf_counter() - start
    ran = run_cli(args, lake, out, scratch / "curate.log")
    if ran["exit_code"] != 0:
        print((scratch / "curate.log").read_text()[-4000:], file=sys.stderr)
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "machine": {"cores": len(os.sched_getaffinity(0)), "load_average_end": round(os.getloadavg()[0], 1)},
              "lake": {"size": lake.size, "dim": lake.dim, "components": lake.components, "copies": lake.copies,
                       "queries": lake.queries, "curated_components": lake.curated_components,
                       "seconds": round(lake_seconds, 1)},
              "run": ran, "stages": stage_table(out), "quality": quality(out, lake),
              "formula": task_bytes(run_sizes(args, lake))}
    result["completed_without_restart"] = ran["exit_code"] == 0 and ran["memory"]["restarts"] == 0
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    scratch = args.dir or Path(tempfile.mkdtemp(prefix="dinolab-scale-run-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, scratch)
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print("\n" + report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nresults: {args.json}")
    return result


if __name__ == "__main__":
    main()
