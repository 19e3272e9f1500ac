"""Cluster + sample as per-partition steps on one worker vs today's single task, on synthetic embeddings.

The output folder is written once (``--count`` 256-d vectors around ``--centres`` Gaussian centres, in
partitions of ``--partition-size``, all kept by dedup). Then, each in a fresh process: the single-task
stages (``curate.stages.cluster`` and ``curate.stages.sample``: every embedding in one matrix), and the
steps of ``curate.cluster_steps`` and ``curate.sample_steps`` run one after another in one process (what one
worker does, one task at a time). Reported: wall time and peak RSS of each, and their ratios.

    python -m benchmarks.cluster_sample_steps --count 200000
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._shared.embedding_tables import write_embedding_out
from benchmarks._shared.jobs import run_job, timed


def write_out(out: Path, count: int, centres: int, partition_size: int, dim: int = 256, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centres, dim), dtype=np.float32)
    vectors = means[rng.integers(0, centres, count)]
    vectors += 0.5 * rng.standard_normal((count, dim), dtype=np.float32)
    write_embedding_out(out, vectors, np.arange(count) // partition_size)


def job(spec: dict) -> dict:
    from benchmarks._shared.in_process import run_shape
    from dinolab.curate import cluster_steps, sample_steps, stages, tables
    from dinolab.schemas.config import load_config

    out = Path(spec["out"])
    config = load_config(None, spec["overrides"])

    def work() -> dict:
        if spec["variant"] == "single":
            stages.cluster(out, config)
            stages.sample(out, config)
        else:
            for module in (cluster_steps, sample_steps):
                run_shape(out, config, module.STEPS)
        return {"selected": len(tables.read_table(out, "selection"))}

    return timed(spec, work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job")
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--centres", type=int, default=500)
    parser.add_argument("--partition-size", type=int, default=20_000)
    parser.add_argument("--set", action="append", default=["cluster.ks=[1000, 50]", "cluster.niter=10",
                                                           "sample.method=balanced"],
                        help="config overrides of both runs (repeatable)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.job:
        print(json.dumps(job(json.loads(args.job))))
        return
    with tempfile.TemporaryDirectory(prefix="cluster-steps-") as scratch:
        out = Path(scratch)
        write_out(out, args.count, args.centres, args.partition_size)
        results = {}
        for variant in ("single", "steps"):
            for table in ("clusters", "selection"):
                shutil.rmtree(out / "tables" / table, ignore_errors=True)
            shutil.rmtree(out / "work", ignore_errors=True)
            results[variant] = run_job(__spec__.name, {"variant": variant, "out": str(out), "overrides": args.set})
            print(json.dumps(results[variant]))
    single, steps = results["single"], results["steps"]
    summary = {"count": args.count, "partitions": -(-args.count // args.partition_size), "overrides": args.set,
               "single": single, "steps": steps,
               "time_ratio_steps_over_single": round(steps["seconds"] / single["seconds"], 3),
               "peak_ratio_steps_over_single": round(steps["peak_gib"] / single["peak_gib"], 3)}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
