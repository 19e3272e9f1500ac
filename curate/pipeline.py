"""The curation steps over one work folder; every step reads files, writes files, and can be rerun.

Layout of ``WORK``::

    pool/ curated/ <other sets>/   files.txt, embed.json, embeddings/chunk_NNNNN.safetensors
    dedup/                         pairs.csv, components.csv, kept.txt, removed.csv, summary.json
    cluster/                       centroids_levelL.npy, parent_levelL.npy, rows.npy, clusters.csv, summary.json
    select/                        selected.txt, manifest.jsonl, summary.json

A step whose ``summary.json`` exists is skipped unless ``force``; ``summary.json`` is written last, so
an interrupted step is redone on the next run. A step that runs deletes the outputs of the steps after
it (:data:`STEP_ORDER`), which were computed from its old results.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curate.dedup import IndexKind, KeepRule, deduplicate
from curate.embed import EmbeddingTable, load_embeddings
from curate.kmeans import ClusterTree, default_ks, hierarchical_kmeans
from curate.manifest import (
    read_json,
    read_lines,
    write_csv,
    write_json,
    write_jsonl,
    write_lines,
    write_npy,
)
from curate.select import (
    Selection,
    retrieve_from_clusters,
    retrieve_nearest,
    select_balanced,
)


STEP_ORDER = ("dedup", "cluster", "select", "report")


class StepInputMissing(FileNotFoundError):
    """An earlier step's output is needed and absent."""


def set_directory(work: Path, name_or_path: str) -> Path:
    """A set given by name (``WORK/NAME``) or by the path of a folder written by the embed step."""
    candidate = work / name_or_path
    if (candidate / "embed.json").is_file():
        return candidate
    if (Path(name_or_path) / "embed.json").is_file():
        return Path(name_or_path)
    raise StepInputMissing(
        f"no embeddings for {name_or_path!r}: run 'dinolab curate embed' for it first "
        f"(looked for {candidate / 'embed.json'})"
    )


def load_set(directory: Path) -> EmbeddingTable:
    settings = read_json(directory / "embed.json")
    files = read_lines(directory / "files.txt")
    return load_embeddings(directory / "embeddings", files, settings["chunk_size"])


def step_done(directory: Path, force: bool) -> bool:
    """True when the step's summary exists and should be kept; with ``force`` the folder is cleared."""
    if force and directory.exists():
        shutil.rmtree(directory)
    done = (directory / "summary.json").is_file()
    if not done:
        invalidate_after(directory.parent, directory.name)
    return done


def invalidate_after(work: Path, step: str) -> None:
    """Delete the outputs of every step after ``step`` (``"embed"``: all of them)."""
    later = STEP_ORDER if step == "embed" else STEP_ORDER[STEP_ORDER.index(step) + 1 :]
    for name in later:
        if (work / name).exists():
            shutil.rmtree(work / name)


def pool_rows(work: Path, pool: EmbeddingTable) -> np.ndarray:
    """Rows of the pool table left after dedup (all rows when dedup was not run)."""
    kept_file = work / "dedup" / "kept.txt"
    if not kept_file.is_file():
        return np.arange(len(pool.names))
    kept = set(read_lines(kept_file))
    return np.array([i for i, name in enumerate(pool.names) if name in kept], dtype=np.int64)


def run_dedup(
    work: Path,
    threshold: float,
    k: int = 16,
    kind: IndexKind = "auto",
    rule: KeepRule = "first",
    against: Sequence[str] = ("curated",),
    force: bool = False,
    center: bool = False,
    nprobe: int = 16,
) -> dict[str, Any]:
    """Deduplicate ``WORK/pool`` and remove pool images near-duplicating the ``against`` sets."""
    out = work / "dedup"
    if step_done(out, force):
        return read_json(out / "summary.json")
    pool = load_set(set_directory(work, "pool"))
    references = {}
    for name in against:
        directory = set_directory(work, name)
        table = load_set(directory)
        references[directory.name] = (table.embeddings, table.names)
    result = deduplicate(
        pool.embeddings, pool.names, threshold, k, kind, rule, pool.sizes.prod(axis=1), references, center, nprobe
    )
    names, pairs = pool.names, result.pairs
    write_csv(
        out / "pairs.csv",
        ["first", "second", "similarity"],
        ((names[a], names[b], f"{s:.6f}") for a, b, s in zip(pairs.first, pairs.second, pairs.similarity)),
    )
    sizes = np.bincount(result.components)
    write_csv(
        out / "components.csv",
        ["name", "component", "component_size", "kept"],
        ((n, int(c), int(sizes[c]), int(k_)) for n, c, k_ in zip(names, result.components, result.keep)),
    )
    write_lines(out / "kept.txt", (n for n, keep in zip(names, result.keep) if keep))
    write_csv(
        out / "removed.csv",
        ["name", "reason", "matched", "similarity"],
        ((names[r.index], r.reason, r.matched, f"{r.similarity:.6f}") for r in result.removals),
    )
    reasons: dict[str, int] = {}
    for removal in result.removals:
        reasons[removal.reason] = reasons.get(removal.reason, 0) + 1
    summary = {
        "pool": len(names),
        "undecodable": len(pool.skipped),
        "pairs": len(result.pairs),
        "duplicate_groups": int((sizes > 1).sum()),
        "largest_group": int(sizes.max()) if len(sizes) else 0,
        "removed": reasons,
        "kept": int(result.keep.sum()),
        "threshold": threshold,
        "k": k,
        "index": kind,
        "nprobe": nprobe,
        "keep_rule": rule,
        "centred": center,
        "against": sorted(references),
    }
    write_json(out / "summary.json", summary)
    return summary


def run_cluster(
    work: Path,
    ks: Sequence[int] | None = None,
    levels: int = 3,
    niter: int = 20,
    resampling_steps: int = 0,
    seed: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Hierarchical k-means of the (deduplicated) pool."""
    out = work / "cluster"
    if step_done(out, force):
        return read_json(out / "summary.json")
    pool = load_set(set_directory(work, "pool"))
    rows = pool_rows(work, pool)
    if len(rows) == 0:
        raise StepInputMissing("no pool images left to cluster")
    ks = list(ks) if ks else default_ks(len(rows), levels)
    tree = hierarchical_kmeans(pool.embeddings[rows], ks, niter, resampling_steps, seed=seed)
    tree.save(out)
    write_npy(out / "rows.npy", rows)
    labels = [tree.labels(level) for level in range(1, tree.num_levels + 1)]
    write_csv(
        out / "clusters.csv",
        ["name"] + [f"level{level}" for level in range(1, tree.num_levels + 1)],
        ([pool.names[row]] + [int(lab[i]) for lab in labels] for i, row in enumerate(rows)),
    )
    summary = {
        "points": len(rows),
        "k_requested": list(ks),
        "k": [len(c) for c in tree.centroids],
        "empty_clusters": [int((tree.sizes(level) == 0).sum()) for level in range(1, tree.num_levels + 1)],
        "niter": niter,
        "resampling_steps": resampling_steps,
        "seed": seed,
    }
    write_json(out / "summary.json", summary)
    return summary


def load_cluster_tree(work: Path) -> tuple[ClusterTree, np.ndarray]:
    """The saved tree and the pool rows its points stand for."""
    out = work / "cluster"
    if not (out / "summary.json").is_file():
        raise StepInputMissing("no clusters: run 'dinolab curate cluster' first")
    return ClusterTree.load(out), np.load(out / "rows.npy")


def run_select(
    work: Path,
    method: str = "auto",
    per_query: int = 4,
    per_cluster: int = 100,
    min_similarity: float = -1.0,
    count: int | None = None,
    large_query_set: int = 1000,
    seed: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Select pool images: retrieval by the curated set (``neighbours``/``clusters``/``auto``) or
    ``balanced`` sampling of the cluster tree (``count`` images, no curated set needed)."""
    out = work / "select"
    if step_done(out, force):
        return read_json(out / "summary.json")
    pool = load_set(set_directory(work, "pool"))
    curated_names: list[str] = []
    if method == "balanced":
        if not count:
            raise ValueError("balanced selection needs a count")
        tree, rows = load_cluster_tree(work)
        selection = select_balanced(tree, count, seed)
    else:
        curated = load_set(set_directory(work, "curated"))
        curated_names = curated.names
        if method == "auto":
            method = "neighbours" if len(curated.names) >= large_query_set else "clusters"
        if method == "neighbours":
            rows = pool_rows(work, pool)
            selection = retrieve_nearest(
                curated.embeddings, pool.embeddings[rows], per_query, min_similarity
            )
        elif method == "clusters":
            tree, rows = load_cluster_tree(work)
            selection = retrieve_from_clusters(
                curated.embeddings, pool.embeddings[rows], tree.labels(1), tree.centroids[0],
                per_cluster, min_similarity, seed,
            )
        else:
            raise ValueError(f"unknown selection method {method!r}")
    records = _manifest_records(selection, pool.names, rows, curated_names)
    write_lines(out / "selected.txt", (record["name"] for record in records))
    write_jsonl(out / "manifest.jsonl", records)
    summary = {
        "method": selection.method,
        "candidates": len(rows),
        "selected": len(selection),
        "queries_used": int(len(np.unique(selection.query_index[selection.query_index >= 0]))),
        "per_query": per_query,
        "per_cluster": per_cluster,
        "min_similarity": min_similarity,
        "count": count,
        "seed": seed,
    }
    write_json(out / "summary.json", summary)
    return summary


def _manifest_records(
    selection: Selection, pool_names: list[str], rows: np.ndarray, curated_names: list[str]
) -> list[dict[str, Any]]:
    records = []
    for i, row in enumerate(selection.pool_index):
        query, cluster, similarity = (
            int(selection.query_index[i]), int(selection.cluster[i]), float(selection.similarity[i])
        )
        records.append(
            {
                "name": pool_names[rows[row]],
                "method": selection.method,
                "query": curated_names[query] if query >= 0 else None,
                "cluster": cluster if cluster >= 0 else None,
                "similarity": round(similarity, 6) if np.isfinite(similarity) else None,
            }
        )
    return records
