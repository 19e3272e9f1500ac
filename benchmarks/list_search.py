"""An IVF-Flat shard searched list by list (``curate.knn.search_by_list``) vs faiss's own search of the same lists.

A Gaussian mixture of ``--size`` unit 256-d vectors in one IVF-Flat shard (nlist 2·√n, as ``knn.plan_index``);
the first ``--queries`` of them search it at ``nprobe`` 16 for their top ``k`` = 65 above cosine ``--threshold``,
(a) with faiss's ``search_preassigned`` (each query scans its lists: bound by memory bandwidth) and (b) list by
list (the queries visiting a list in one matrix product), both on the same coarse assignment. Reported: seconds
of each, the ratio, and whether the two found the same links::

    python -m benchmarks.list_search --size 300000 --queries 100000
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np

from dinolab.curate import knn


def mixture(size: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, size // 1000), dim)).astype(np.float32)
    vectors = centres[rng.integers(0, len(centres), size)] + 1.2 * rng.standard_normal((size, dim), dtype=np.float32)
    return knn.unit_rows(vectors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=300_000)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--threshold", type=float, default=0.6)
    parser.add_argument("--json")
    args = parser.parse_args()
    vectors = mixture(args.size, args.dim)
    plan = knn.plan_index({0: args.size}, args.dim, "ivf", shard_vectors=args.size)
    shard = knn.add_to_shard(knn.train_index(plan, vectors[knn.sample_ids(plan)]), [(np.arange(args.size), vectors)])
    queries, ids = vectors[:args.queries], np.arange(args.queries)
    lists, centroid_sims = knn.coarse_lists(shard, queries, args.nprobe)
    ivf = faiss.extract_index_ivf(shard)
    ivf.nprobe = args.nprobe
    start = time.perf_counter()
    sims, neighbours = ivf.search_preassigned(queries, 65, lists, centroid_sims)
    faiss_seconds = time.perf_counter() - start
    start = time.perf_counter()
    found = knn.search_by_list(faiss.downcast_index(ivf), ids, queries, lists, 65, args.threshold)
    list_seconds = time.perf_counter() - start
    kept = sims >= args.threshold
    theirs = set(zip(np.repeat(ids, 65).reshape(kept.shape)[kept].tolist(), neighbours[kept].tolist()))
    ours = set(zip(found.query.tolist(), found.neighbor.tolist()))
    result = {"size": args.size, "queries": args.queries, "dim": args.dim, "nlist": plan.nlist, "nprobe": args.nprobe,
              "faiss_threads": faiss.omp_get_max_threads(), "faiss_seconds": round(faiss_seconds, 3),
              "by_list_seconds": round(list_seconds, 3), "speedup": round(faiss_seconds / list_seconds, 2),
              "links": len(ours), "same_links": ours == theirs}
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(result, stream, indent=1)


if __name__ == "__main__":
    main()
