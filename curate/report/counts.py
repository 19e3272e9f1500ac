"""The run report's numbers: counts of every table, the largest duplicate groups, rejected files, the
clusters and members shown, and the run's files, gathered from ``OUT/tables/`` into one JSON-ready dict.

Reads whatever tables exist (an absent table is reported as ``{"present": false}``, one with a wrong schema
raises :class:`~schemas.tables.SchemaError`). Counts are computed with pyarrow/numpy; only rejected files,
the largest groups and the sampled cluster members become Python objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dinolab.core.storage import INDEX_NAME, SHARD_DIR
from dinolab.curate import output
from dinolab.curate.output import Location, RemotePath
from dinolab.curate.tables import done_parts, read_table, table_dir
from dinolab.schemas.config import ReportConfig
from dinolab.schemas.tables import ROLES, TABLES

PICTURES = ("cluster_sizes.png", "duplicate_groups.png", "cluster_members.png")
STATUSES = ("ok", "error", "filtered")
LARGEST_GROUPS = 20
"""Duplicate groups listed in the report (at least; ``config.examples`` if larger)."""
GROUP_MEMBERS = 100
"""Members listed per duplicate group."""
UNREADABLE_LISTED = 1000
"""Rejected files listed in the report."""
LINKED = 50
"""Files of each table (and shards) linked from the report; the rest are counted."""

Tables = dict[str, pa.Table | None]


# ----------------------------------------------------------------------------------------------- tables


def load_tables(out: Location) -> Tables:
    """Every table that has parts, validated; ``None`` for the absent ones."""
    return {name: read_table(out, name) if done_parts(out, name) else None for name in TABLES}


def _value_counts(column: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    """``{value: rows}`` of a string column, sorted by value."""
    counts = pc.value_counts(column)
    pairs = zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())
    return {str(value): int(count) for value, count in sorted(pairs, key=lambda pair: str(pair[0]))}


def _per_set(table: pa.Table | None, by: Sequence[str] = ()) -> dict[tuple, int] | None:
    """Rows per (set, role, *by), or ``None`` for an absent table."""
    if table is None:
        return None
    keys = ["set", "role", *by]
    grouped = table.group_by(keys).aggregate([("key", "count")])
    columns = [grouped.column(key).to_pylist() for key in keys] + [grouped.column("key_count").to_pylist()]
    return {tuple(row[:-1]): int(row[-1]) for row in zip(*columns)}


def _uris(keys: Sequence[str], tables: Tables) -> dict[str, str]:
    """The uri of each of ``keys`` found in the images table (or, without one, the files table)."""
    table = tables["images"] if tables["images"] is not None else tables["files"]
    if table is None or not keys:
        return {}
    found = table.filter(pc.is_in(table["key"], value_set=pa.array(list(keys), pa.string())))
    return dict(zip(found["key"].to_pylist(), found["uri"].to_pylist()))


# ------------------------------------------------------------------------------------------------ counts


def _sets(tables: Tables) -> dict[str, dict[str, Any]]:
    """Per set: role, files listed, images ok / error / filtered, vectors embedded (None: table absent)."""
    files, embedded = _per_set(tables["files"]), _per_set(tables["embeddings"])
    statuses = _per_set(tables["images"], ("status",))
    roles: dict[str, str] = {}
    for counts in (files, statuses, embedded):
        for set_name, role, *_ in counts or {}:
            roles.setdefault(set_name, role)

    def total(counts: dict[tuple, int] | None, set_name: str, *rest: str) -> int | None:
        if counts is None:
            return None
        return sum(n for key, n in counts.items() if key[0] == set_name and tuple(key[2:]) == rest)

    rank = {role: i for i, role in enumerate(ROLES)}
    sets = {}
    for set_name in sorted(roles, key=lambda s: (rank.get(roles[s], len(rank)), s)):
        row: dict[str, Any] = {"role": roles[set_name], "files": total(files, set_name)}
        row |= {status: total(statuses, set_name, status) for status in STATUSES}
        sets[set_name] = row | {"embedded": total(embedded, set_name)}
    return sets


def _roles(sets: dict[str, dict[str, Any]]) -> dict[str, dict[str, int | None]]:
    """The per-set counts summed per role."""
    roles: dict[str, dict[str, int | None]] = {}
    for row in sets.values():
        totals = roles.setdefault(row["role"], {})
        for name, value in row.items():
            if name != "role":
                totals[name] = None if value is None else (totals.get(name) or 0) + value
    return roles


def _images(table: pa.Table | None) -> dict[str, Any]:
    if table is None:
        return {"present": False}
    return {"present": True, "total": len(table),
            "by_status": {status: 0 for status in STATUSES} | _value_counts(table["status"])}


def _total(table: pa.Table | None) -> dict[str, Any]:
    return {"present": False} if table is None else {"present": True, "total": len(table)}


def _similarity(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)


def _group(members: pa.Table, group: int) -> dict[str, Any]:
    """One listed duplicate group: its kept member first, then the others in table order."""
    kept = members["kept"].to_numpy(zero_copy_only=False)
    names_kept = pc.fill_null(pc.equal(members["key"], members["kept_key"]), False).to_numpy(zero_copy_only=False)
    first = kept | names_kept
    order = np.argsort(~first, kind="stable")[:GROUP_MEMBERS]
    rows = members.take(pa.array(order)).to_pylist()
    if first.any():
        kept_key = rows[0]["key"]
    else:  # a leak: the removed images point at an image outside the pool
        kept_key = next((row["kept_key"] for row in rows if row["kept_key"] is not None), None)
    return {
        "group": int(group), "size": len(members), "kept_key": kept_key,
        "keys": [row["key"] for row in rows], "uris": [row["uri"] for row in rows],
        "kept": [row["kept"] for row in rows], "reasons": [row["reason"] for row in rows],
        "similarities": [_similarity(row["similarity"]) for row in rows],
    }


def _largest(table: pa.Table, groups: np.ndarray, ids: np.ndarray, sizes: np.ndarray,
             removed: np.ndarray, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` groups, largest first (ties: group id); a group of one only if its image is removed."""
    candidates = np.flatnonzero((sizes > 1) | (removed > 0))
    chosen = candidates[np.lexsort((ids[candidates], -sizes[candidates]))][:limit]
    rows = np.flatnonzero(np.isin(groups, ids[chosen]))
    in_group = groups[rows]
    return [_group(table.take(pa.array(rows[in_group == ids[i]])), ids[i]) for i in chosen]


def _duplicates(table: pa.Table | None, config: ReportConfig) -> dict[str, Any]:
    if table is None:
        return {"present": False}
    groups = table["group"].to_numpy()
    kept = table["kept"].to_numpy(zero_copy_only=False).astype(bool)
    ids, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    removed = np.bincount(inverse, weights=~kept, minlength=len(ids)).astype(np.int64)
    size_values, size_counts = np.unique(sizes, return_counts=True)
    dropped = table.filter(pc.invert(table["kept"]))
    return {
        "present": True, "images": len(table), "kept": int(kept.sum()), "removed": int((~kept).sum()),
        "by_reason": _value_counts(pc.fill_null(dropped["reason"], "unknown")),
        "groups": len(ids), "duplicate_groups": int((sizes > 1).sum()),
        "group_sizes": {str(int(size)): int(n) for size, n in zip(size_values, size_counts)},
        "largest": _largest(table, groups, ids, sizes, removed, max(LARGEST_GROUPS, config.examples)),
    }


def finest_sizes(table: pa.Table) -> np.ndarray:
    """Images per finest-level cluster."""
    return np.unique(table["cluster"].to_numpy(), return_counts=True)[1]


def _per_level(table: pa.Table) -> list[int]:
    """Distinct labels used at each level, finest first."""
    levels = table["levels"].combine_chunks()
    lengths = pc.list_value_length(levels).to_numpy(zero_copy_only=False)
    if not len(lengths):
        return []
    if lengths.max() == 0:
        return [len(finest_sizes(table))]
    labels = pc.list_flatten(levels).to_numpy()
    parents = pc.list_parent_indices(levels).to_numpy()
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    depth = np.arange(len(labels)) - starts[parents]
    return [len(np.unique(labels[depth == level])) for level in range(int(lengths.max()))]


def _cluster_examples(table: pa.Table, examples: int, seed: int) -> list[dict[str, Any]]:
    """Up to ``examples`` random clusters (``seed``), each with up to ``examples`` random members (keys, uris)."""
    labels = table["cluster"].to_numpy()
    ids, sizes = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed)
    shown = []
    for i in np.sort(rng.choice(len(ids), size=min(examples, len(ids)), replace=False)):
        members = np.flatnonzero(labels == ids[i])
        chosen = pa.array(np.sort(rng.choice(members, size=min(examples, len(members)), replace=False)))
        shown.append({"cluster": int(ids[i]), "size": int(sizes[i]), "keys": table["key"].take(chosen).to_pylist(),
                      "uris": table["uri"].take(chosen).to_pylist()})
    return shown


def _clusters(table: pa.Table | None, config: ReportConfig) -> dict[str, Any]:
    if table is None:
        return {"present": False}
    sizes = finest_sizes(table)
    finest = ({"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())}
              if len(sizes) else {"min": None, "median": None, "max": None})
    return {"present": True, "images": len(table), "clusters": len(sizes), "per_level": _per_level(table),
            "finest_sizes": finest,
            "shown": _cluster_examples(table, config.examples, config.seed) if config.examples > 0 else []}


def _selection(table: pa.Table | None) -> dict[str, Any]:
    if table is None:
        return {"present": False}
    return {"present": True, "selected": len(table), "by_method": _value_counts(table["method"])}


def _shards(table: pa.Table | None, out: Location) -> dict[str, Any]:
    if table is None:
        return {"present": False}
    folder = out / SHARD_DIR
    paths = [folder / Path(name).name for name in pc.unique(table["shard"]).to_pylist()]
    sizes = [output.size(path) for path in paths]
    on_disk = [size for size in sizes if size is not None]
    return {"present": True, "count": len(paths), "samples": len(table), "bytes": int(sum(on_disk)),
            "missing": len(paths) - len(on_disk), "index": output.is_file(folder / INDEX_NAME)}


def _unreadable(table: pa.Table | None) -> dict[str, Any]:
    """Files ingest refused (status other than ok): the first :data:`UNREADABLE_LISTED` with their reasons."""
    if table is None:
        return {"present": False}
    rejected = table.filter(pc.not_equal(table["status"], "ok"))
    listed = rejected.slice(0, UNREADABLE_LISTED).select(["key", "uri", "set", "role", "status", "error"])
    rows = [{**{k: v for k, v in row.items() if k != "error"}, "reason": row["error"]} for row in listed.to_pylist()]
    return {"present": True, "total": len(rejected), "listed": rows, "truncated": len(rejected) > len(rows)}


def _outputs(out: Location, tables: Tables) -> dict[str, Any]:
    """The run's files a reader may open, relative to ``OUT`` (the first :data:`LINKED` of each kind): table
    parts, shards, their index and run.json; ``counts`` says how many there are."""
    parts = {name: output.names(table_dir(out, name), "part-*.parquet") for name, table in tables.items()
             if table is not None}
    shards = output.names(out / SHARD_DIR, "*.tar")
    index = [f"{SHARD_DIR}/{INDEX_NAME}"] if output.is_file(out / SHARD_DIR / INDEX_NAME) else []
    run = ["run.json"] if output.is_file(out / "run.json") else []
    return {"tables": {name: [f"tables/{name}/{part}" for part in found[:LINKED]] for name, found in parts.items()},
            "shards": [f"{SHARD_DIR}/{name}" for name in shards[:LINKED]], "index": index, "run": run,
            "counts": {"shards": len(shards)} | {f"tables/{name}": len(found) for name, found in parts.items()}}


def _shown_groups(duplicates: dict[str, Any], tables: Tables, examples: int) -> None:
    """Mark the first ``examples`` listed groups ``shown`` and give each its kept image's uri (a leak's is outside)."""
    largest = duplicates.get("largest", [])
    outside = [g["kept_key"] for g in largest[:examples]
               if g["kept_key"] is not None and g["kept_key"] not in g["keys"]]
    uris = _uris(outside, tables)
    for number, group in enumerate(largest):
        group["shown"] = number < examples
        if group["shown"]:
            inside = dict(zip(group["keys"], group["uris"]))
            group["kept_uri"] = inside.get(group["kept_key"], uris.get(group["kept_key"]))


def _figures(report: dict[str, Any], config: ReportConfig) -> list[str]:
    """The pictures the tables allow, in :data:`PICTURES` order."""
    clusters = report["clusters"].get("images", 0) > 0
    wanted = {
        "cluster_sizes.png": clusters,
        "duplicate_groups.png": config.examples > 0 and bool(report["duplicates"].get("largest")),
        "cluster_members.png": clusters and config.examples > 0,
    }
    return [name for name in PICTURES if wanted[name]]


def gather(out: Location, tables: Tables, config: ReportConfig, stages: Sequence[dict]) -> dict[str, Any]:
    sets = _sets(tables)
    report = {
        "tables": {name: table is not None for name, table in tables.items()},
        "stages": [dict(stage) for stage in stages],
        "sets": sets,
        "roles": _roles(sets),
        "files": _total(tables["files"]),
        "images": _images(tables["images"]),
        "embeddings": _total(tables["embeddings"]),
        "duplicates": _duplicates(tables["duplicates"], config),
        "clusters": _clusters(tables["clusters"], config),
        "selection": _selection(tables["selection"]),
        "shards": _shards(tables["shards"], out),
        "unreadable": _unreadable(tables["images"]),
        "outputs": _outputs(out, tables),
    }
    _shown_groups(report["duplicates"], tables, config.examples)
    return report | {"figures": _figures(report, config)}


def collect(out: str | Path | RemotePath, config: ReportConfig, stages: Sequence[dict] = ()) -> dict[str, Any]:
    """The report of ``out`` as a dict (what ``report.json`` holds), writing nothing."""
    out = output.location(out)
    return gather(out, load_tables(out), config, stages)

