"""Bytes one task of each kNN-dedup, cluster and sample step holds above the worker's baseline (its imports),
read off the step code (``curate/knn_dedup.py``, ``knn.py``, ``cluster_steps.py``, ``lloyd.py``,
``sample_steps.py``), so a run's measured peaks can be checked against them and a larger run planned::

    sizes = Sizes(pool=3_000_000, partition=100_000, dim=256)
    task_bytes(sizes)["dedup search"]       # one query partition against one index shard

Terms (float32 = 4 bytes a value): ``V = 4 n d`` is one partition's vectors. A step that reads a partition of the
``embeddings`` matrix holds its memory-mapped pages (counted in RSS while mapped), the fancy-indexed float32
copy and the unit-normalised copy: ``3 V``. Arrow tables of keys and uris cost about ``TABLE_ROW`` bytes a row.
Steps whose memory grows with the whole pool (not a partition) are ``dedup components`` and ``dedup train`` (a
sample of 40 vectors a list of the IVF); ``cluster radius`` holds one bucket of clusters: about a partition's pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TABLE_ROW = 300
"""Bytes a row of a partition's key/uri tables take in Arrow (keys, ``emb://`` or file uris, small columns)."""
BLOCK = 8192
"""Rows a k-means assignment scores at once (``curate.lloyd.CHUNK``)."""
EXACT_MAX_K = 8192
"""Above this many centroids the assignment goes through an inverted file over them (``cluster.exact_max_k``)."""
SEARCH_BLOCK = 2 * 4 * (1 << 24)
"""A list-by-list shard search's similarity block and the query rows it copies (``curate.knn.BLOCK_FLOATS``): the
ceiling; a list's block is ``|queries visiting it| x |its vectors|`` floats, well under it at these sizes."""
COMPONENT_CHUNK = 1 << 22
"""Ids the components pass handles at once (``curate.components.CHUNK``)."""
QUERY_BLOCK = 65_536
"""Curated queries a sample task holds at most (``curate.sample_steps.QUERY_BLOCK``)."""


@dataclass(frozen=True)
class Sizes:
    """What a task's memory depends on. ``pool``: pool images (N); ``kept``: after dedup (default N);
    ``partition``: rows of a lake partition (n_p); ``shard``: ``dedup.shard_vectors`` (S); ``k``: ``dedup.k``;
    ``clusters``: level-1 clusters (K, default N / 1000); ``queries``: curated queries (Q); ``per_query``;
    ``query_block``: curated queries a sample task holds (b = min(Q, ``query_block``));
    ``index``: ``flat``, ``ivf`` or ``ivfpq`` (default: what ``index=auto`` picks for the pool)."""

    pool: int
    partition: int
    dim: int = 256
    kept: int | None = None
    shard: int = 250_000
    k: int = 64
    nprobe: int = 16
    clusters: int | None = None
    queries: int = 10_000
    per_query: int = 4
    index: str | None = None
    query_block: int = QUERY_BLOCK

    @property
    def kind(self) -> str:
        return self.index or ("flat" if self.pool <= 100_000 else "ivf" if self.pool <= 10_000_000 else "ivfpq")

    @property
    def nlist(self) -> int:
        return max(1, min(self.pool // 39, int(2 * math.sqrt(self.pool)))) if self.kind != "flat" else 0


def task_bytes(s: Sizes) -> dict[str, float]:
    """Per step, the bytes its largest task holds above the worker's baseline (see the module docstring)."""
    n, d, N = min(s.partition, s.pool), s.dim, s.pool
    kept = s.kept or N
    K = s.clusters or max(1, kept // 1000)
    V = 4 * n * d
    shard = min(s.shard, N) if s.shard >= n else n  # a shard holds whole partitions
    code = {"flat": 4 * d, "ivf": 4 * d, "ivfpq": max(1, d // 4)}[s.kind] + 8  # a vector in an index, id included
    train = min(N, 40 * max(s.nlist, 256 if s.kind == "ivfpq" else 1)) if s.kind != "flat" else 0
    sub = min(1.0, 256 * K / kept)  # the share of a partition a Lloyd round trains on
    block = 4 * BLOCK * (K if K <= EXACT_MAX_K else int(math.sqrt(K)))  # scores, or the IVF's coarse ones
    width = -(-K // -(-N // n))  # clusters in a radius bucket: ceil(K / partitions)
    bucket = min(kept, 2 * width * max(1, kept // K) + kept * n * width / (N * K))  # 2 r a cluster, one slice
    b = min(s.queries, s.query_block)  # curated queries of one block
    grouped = 2 * (N - kept) if s.kept else N // 50  # images in components of two or more (~pairs)
    return {
        # dedup (curate/knn_dedup.py)
        "dedup prepare": TABLE_ROW * n * 2,  # the embeddings and images parts, the sorted pool rows
        "dedup train": 12 * train * d + V + 4 * s.nlist * d,  # the gathered sample, its copy and k-means' copy
        "dedup assign": 3 * V + 12 * n * s.nprobe + 4 * s.nlist * d,  # vectors, (list, similarity) per probe
        "dedup add": 2 * code * shard + 3 * V,  # inverted lists grow by doubling; one partition at a time
        "dedup search": 2 * code * shard + 3 * V + 36 * n * s.nprobe + 20 * n * (s.k + 1) + SEARCH_BLOCK,
        # lists visited (with their order and the visiting rows), each row's k + 1 links at most, one block
        "dedup exact": 100 * min(N, 4_000_000),  # one sha256 bucket's digests and ids, sorted (none when unhashed)
        "dedup merge": 40 * n * (s.k + 1),  # at most, when every row has k + 1 links above the threshold
        "dedup components": 5 * N + 80 * grouped + 17 * COMPONENT_CHUNK,  # int32 parent, a flag; per grouped
        # image its id, partition, pixels, order; chunk temporaries
        "dedup write": 4 * V + TABLE_ROW * n,  # own vectors (mapped, copy, unit), the kept images' vectors
        # cluster (curate/cluster_steps.py, curate/lloyd.py)
        "cluster prepare": 3 * V + 100 * n + 4 * K * d,  # vectors, unit copy, per-key scores, K seeds
        "cluster seed": 16 * K * d,  # two partitions' K candidates and their merge
        "cluster assign": V + 4 * sub * V + 16 * K * d + block,  # mapped pool, fixed-point float64 copy
        "cluster update": 32 * K * d,  # centroids, int64 sums, a part's sums, float64 means
        "cluster resample": V + 32 * n + block,  # labels, similarities, their order by label, the sorted pairs
        "cluster radius": 60 * bucket,  # a (label, similarity) per pair of its bucket, sorted
        "cluster radii": 8 * K,  # the buckets' radii, joined
        "cluster upper": 16 * K * d,  # the k-means of the level-1 centroids
        "cluster write": 4 * V + 200 * n + block,
        # sample, retrieval of the per_query nearest (curate/sample_steps.py): one query block of b rows a task
        "sample prepare": 100 * s.queries + 4 * b * d + V,  # every curated key in key order, a block, a part
        "sample scan": 4 * V + 4 * b * d + 12 * b * s.per_query + 100 * n,  # + flat index copy
        "sample plan": 40 * b * s.per_query,  # one block's hits, merged over the partitions
        "sample draw": 2 * V + 100 * n,  # balanced and cluster retrieval only: scores of the partition's keys
        "sample limit": 16 * min(kept, s.queries * s.per_query),  # (cluster, score) of each image drawn
        "sample write": 2 * V + 4 * b * d + 20 * b * s.per_query + 120 * n,  # + the best query of each row
    }
