"""Time and peak memory of curation dedup and hierarchical k-means on synthetic embeddings.

Each measurement runs in a fresh subprocess, which reports its wall time, its CPU time (user + system,
all threads: on a shared machine the honest measure of work) and peak resident memory (``VmHWM``,
including the input array). Embeddings are unit Gaussian vectors (``--dim``, float32) with
1% planted noisy copies (cosine about 0.99 to their source), so the recall of approximate indices
against the planted pairs is reported too.

    python -m benchmarks.curate_scale --sizes 100000 1000000 --threads 2
"""

from __future__ import annotations

import argparse
import json

from benchmarks._shared.jobs import run_job, synthetic, timed


def measure(job: dict) -> dict:
    """Run one job in this process; called in the subprocess."""
    import faiss
    import numpy as np

    faiss.omp_set_num_threads(job["threads"])
    data, sources, targets = synthetic(job["count"], job["dim"])
    if job["op"] == "dedup":
        from dinolab.curate.dedup import near_duplicate_pairs

        def work() -> dict:
            pairs = near_duplicate_pairs(data, threshold=0.95, k=job["k"], kind=job["index"], nprobe=job["nprobe"])
            found = set(zip(pairs.first.tolist(), pairs.second.tolist()))
            recall = np.mean([(int(s), int(t)) in found for s, t in zip(sources, targets)])
            return {"pairs": len(pairs), "planted_recall": round(float(recall), 4)}
    else:
        from dinolab.curate.kmeans import hierarchical_kmeans

        def work() -> dict:
            tree = hierarchical_kmeans(data, job["ks"], niter=job["niter"])
            return {"k": [len(c) for c in tree.centroids], "largest_cluster": int(tree.sizes(1).max())}
    return timed(job, work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=16, help="neighbours per image in dedup")
    parser.add_argument("--indexes", nargs="+", default=["flat", "ivf", "hnsw"],
                        help="dedup indexes; flat is skipped above --max-flat")
    parser.add_argument("--max-flat", type=int, default=200_000)
    parser.add_argument("--nprobe", type=int, default=16, help="IVF lists searched per query")
    parser.add_argument("--ks", default="1000,100,10", help="hierarchical k-means clusters per level")
    parser.add_argument("--niter", type=int, default=10)
    parser.add_argument("--json", help="append results as JSON lines to this file")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print(json.dumps(measure(json.loads(args.job))))
        return
    jobs = []
    for count in args.sizes:
        base = {"count": count, "dim": args.dim, "threads": args.threads}
        for index in args.indexes:
            if index == "flat" and count > args.max_flat:
                continue
            jobs.append({**base, "op": "dedup", "index": index, "k": args.k, "nprobe": args.nprobe})
        jobs.append({**base, "op": "kmeans", "ks": [int(k) for k in args.ks.split(",")], "niter": args.niter})
    for job in jobs:
        result = run_job(__spec__.name, job)
        if result is None:
            continue
        line = json.dumps(result)
        print(line, flush=True)
        if args.json:
            with open(args.json, "a") as handle:
                handle.write(line + "\n")


if __name__ == "__main__":
    main()
