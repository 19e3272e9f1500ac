"""Sharded kNN dedup (curate/knn_dedup.py, its steps in a plain loop: one worker) vs the single-task
``duplicates_table`` it replaces, on the same synthetic lake, each in a fresh process: time, peak RSS, ratio.

The lake: ``synthetic(size, dim)`` from ``benchmarks/_shared/jobs.py`` (unit Gaussian float32 vectors, the
last 1 % noisy copies of others) written as ``--partitions`` ``embeddings`` parts plus their ``images`` parts.
"today" is the dedup stage's body before the scale-out: every embedding read into one matrix
(``stages.read_vectors``), then ``duplicates_table``. Both use ``DedupConfig()`` (k = 64, cos >= 0.6, index
auto: IVF-Flat above 10^5, nprobe 16) with ``--threads`` faiss threads.

    .venv/bin/python -m benchmarks.knn_dedup --size 200000 --dir /tmp/knn-bench
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from benchmarks._shared.jobs import peak_memory_gib, run_job, synthetic, timed


def lake_job(job: dict) -> dict:
    """Write the synthetic lake, and the planted pairs' keys (``planted.npy``)."""
    import pyarrow as pa

    from dinolab.curate import tables
    from dinolab.schemas.tables import utc_now

    out, count, parts = Path(job["out"]), job["size"], job["partitions"]
    data, sources, targets = synthetic(count, job["dim"])
    keys = np.array([f"{i:09d}" for i in range(count)], dtype=object)
    bounds = np.linspace(0, count, parts + 1).astype(int)
    for part in range(parts):
        rows = np.arange(bounds[part], bounds[part + 1])
        n = len(rows)
        tables.write_array(out, "embeddings", part, data[rows],
                           pa.table({"key": keys[rows].tolist(), "image_path": [f"synthetic/{k}" for k in keys[rows]],
                                     "set": ["pool"] * n, "role": ["pool"] * n}))
        tables.write_part(out, "embeddings", part, pa.table({
            "key": keys[rows].tolist(), "role": ["pool"] * n, "set": ["pool"] * n, "row": np.arange(n, dtype=np.int32)}))
        tables.write_part(out, "images", part, pa.table({
            "key": keys[rows].tolist(), "uri": [f"synthetic/{k}" for k in keys[rows]], "role": ["pool"] * n,
            "set": ["pool"] * n, "partition": np.full(n, part, np.int32), "bytes": np.full(n, 1000, np.int64),
            "sha256": [f"{i:064x}" for i in rows], "width": np.full(n, 512, np.int32),
            "height": np.full(n, 384, np.int32), "format": ["JPEG"] * n, "phash": [None] * n,
            "status": ["ok"] * n, "error": [None] * n, "provenance": [None] * n, "ingested_at": [utc_now()] * n}))
    np.save(out / "planted.npy", np.array([keys[sources], keys[targets]], dtype=str))
    return {"planted": len(sources)}


def today(out: Path, config) -> dict:
    """The dedup stage's embeddings path before the scale-out: one task, every vector in memory."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from dinolab.curate import stages, tables
    from dinolab.curate.dedup import duplicates_table

    vectors = stages.read_vectors(out)
    pool = vectors.where(pc.equal(vectors.rows.column("role"), "pool"))
    images = tables.read_table(out, "images")
    pool_images = pa.table(stages._lookup(images, pool.keys(), ["key", "uri", "sha256", "width", "height"]))
    duplicates = duplicates_table(pool_images, pool.matrix, {}, config.dedup)
    tables.write_part(out, "duplicates", 0, duplicates)
    return {"in": len(pool.keys()), "out": int(pc.sum(duplicates["kept"]).as_py() or 0)}


def dedup_job(job: dict) -> dict:
    import faiss

    from dinolab.curate import knn_dedup, tables
    from dinolab.schemas.config import DedupConfig, PipelineConfig

    faiss.omp_set_num_threads(job["threads"])
    out = Path(job["out"])
    planted = np.load(out / "planted.npy")
    config = PipelineConfig(dedup=DedupConfig(shard_vectors=job["shard_vectors"]))

    def work() -> dict:
        counts = today(out, config) if job["op"] == "today" else knn_dedup.run_all(out, config)
        table = tables.read_table(out, "duplicates")
        group = dict(zip(table["key"].to_pylist(), table["group"].to_pylist()))
        found = np.mean([group[a] == group[b] for a, b in zip(*planted)]) if planted.size else float("nan")
        return {**counts, "planted_recall": round(float(found), 4)}

    from dinolab.curate import stages  # noqa: F401 (both paths' imports loaded before the work: the same baseline)

    imports = peak_memory_gib()
    result = timed(job, work)
    result["work_gib"] = round(result["peak_gib"] - imports, 3)  # peak above the imports (torch comes with curate)
    table = tables.read_table(out, "duplicates")
    np.save(out / "kept.npy", np.array(sorted(table.filter(table["kept"])["key"].to_pylist())))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--shard-vectors", type=int, default=250_000, help="dedup.shard_vectors")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/knn-dedup-bench"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.job:
        job = json.loads(args.job)
        print(json.dumps(lake_job(job) if job["op"] == "lake" else dedup_job(job)))
        return
    shutil.rmtree(args.dir, ignore_errors=True)
    lake = args.dir / "lake"
    common = {"size": args.size, "dim": args.dim, "partitions": args.partitions}
    run_job(__spec__.name, {"op": "lake", "out": str(lake), **common})
    rows = []
    for op in ("today", "sharded"):
        out = args.dir / op
        shutil.copytree(lake, out)
        rows.append(run_job(__spec__.name, {"op": op, "out": str(out), "threads": args.threads,
                                            "shard_vectors": args.shard_vectors, **common}))
    today_kept, sharded_kept = (np.load(args.dir / op / "kept.npy") for op in ("today", "sharded"))
    summary = {"rows": rows, "time_ratio": round(rows[1]["seconds"] / rows[0]["seconds"], 3),
               "peak_ratio": round(rows[1]["peak_gib"] / rows[0]["peak_gib"], 3),
               "work_ratio": round(rows[1]["work_gib"] / rows[0]["work_gib"], 3),
               "kept_agreement": round(len(np.intersect1d(today_kept, sharded_kept)) /
                                       max(len(np.union1d(today_kept, sharded_kept)), 1), 5)}
    for row in rows:
        print(f"{row['op']:8s} {row['seconds']:8.1f} s  cpu {row['cpu_seconds']:8.1f} s  peak {row['peak_gib']:.2f} GiB  "
              f"kept {row['out']:,} of {row['in']:,}  planted recall {row['planted_recall']}")
    print(f"sharded / today: time {summary['time_ratio']}x, peak RSS {summary['peak_ratio']}x "
          f"(above imports {summary['work_ratio']}x); "
          f"same kept images: {summary['kept_agreement']}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
