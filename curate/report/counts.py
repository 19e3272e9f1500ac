"""The run report's numbers: counts of every table, the largest duplicate groups, rejected files, the
clusters and members shown, and the run's files, gathered from ``OUT/tables/`` into one JSON-ready dict.

Reads whatever tables exist (an absent table is reported as ``{"present": false}``, one with a wrong schema
raises :class:`~schemas.tables.SchemaError`), each a part at a time and only the columns a count needs
(:class:`Parts`): the report holds the counts, a few ``int64`` per duplicate group and per cluster, and
the few rows it lists. Only rejected files, the largest groups and the sampled cluster members become
Python objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dinolab.core.storage import INDEX_NAME, SHARD_DIR
from dinolab.curate import output
from dinolab.curate.output import Location, RemotePath
from dinolab.curate.tables import check_schemas, done_parts, read_columns, row_count, table_dir
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

@dataclass(frozen=True)
class Parts:
    """The parts of one table, read a part at a time and only the columns asked: the report holds counts,
    a few listed rows and a few ``int64`` per duplicate group or cluster, never a whole table."""

    out: Location
    name: str

    def scan(self, columns: Sequence[str]) -> Iterator[pa.Table]:
        return read_columns(self.out, self.name, list(columns))

    def rows(self) -> int:
        return row_count(self.out, self.name)

    def where(self, columns: Sequence[str], column: str, values: Sequence) -> pa.Table:
        """The rows (``columns``) whose ``column`` is in ``values``, in table order."""
        value_set = pa.array(list(values), pa.int64() if isinstance(next(iter(values), 0), (int, np.integer))
                             else pa.string())
        found = [part.filter(pc.is_in(part[column], value_set=value_set)) for part in self.scan(columns)]
        return pa.concat_tables(found) if found else pa.table({name: [] for name in columns})


Tables = dict[str, Parts | None]


# ----------------------------------------------------------------------------------------------- tables


def load_tables(out: Location) -> Tables:
    """Every table that has parts, each part's schema validated (from its footer); ``None`` for the absent ones."""
    found: Tables = {}
    for name in TABLES:
        if not done_parts(out, name):
            found[name] = None
            continue
        check_schemas(out, name)
        found[name] = Parts(out, name)
    return found


def _value_counts(parts: Iterable[pa.Array | pa.ChunkedArray]) -> dict[str, int]:
    """``{value: rows}`` of a string column given part by part, sorted by value."""
    totals: dict[str, int] = {}
    for column in parts:
        counts = pc.value_counts(column)
        for value, count in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()):
            totals[str(value)] = totals.get(str(value), 0) + int(count)
    return dict(sorted(totals.items()))


def id_counts(parts: Iterable[np.ndarray | tuple[np.ndarray, np.ndarray]]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct ids of an id column given part by part (each part its ids, or its (ids, weights)): the ids, rows per
    id and the summed weight per id. Holds the partial counts of the parts read, never the parts themselves."""
    ids, counts, sums = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for part in parts:
        column, weight = part if isinstance(part, tuple) else (part, None)
        unique, inverse, count = np.unique(np.asarray(column, dtype=np.int64), return_inverse=True, return_counts=True)
        ids.append(unique)
        counts.append(count)
        sums.append(np.zeros(len(unique), np.int64) if weight is None else
                    np.bincount(inverse.reshape(-1), weights=weight, minlength=len(unique)).astype(np.int64))
    ids_, counts_, sums_ = np.concatenate(ids), np.concatenate(counts), np.concatenate(sums)
    unique, inverse = np.unique(ids_, return_inverse=True)
    return (unique, np.bincount(inverse, weights=counts_, minlength=len(unique)).astype(np.int64),
            np.bincount(inverse, weights=sums_, minlength=len(unique)).astype(np.int64))


def _per_set(table: Parts | None, by: Sequence[str] = ()) -> dict[tuple, int] | None:
    """Rows per (set, role, *by), or ``None`` for an absent table."""
    if table is None:
        return None
    keys = ["set", "role", *by]
    totals: dict[tuple, int] = {}
    for part in table.scan(keys):
        grouped = part.group_by(keys).aggregate([([], "count_all")])
        columns = [grouped.column(key).to_pylist() for key in keys] + [grouped.column("count_all").to_pylist()]
        for row in zip(*columns):
            totals[tuple(row[:-1])] = totals.get(tuple(row[:-1]), 0) + int(row[-1])
    return totals


def _uris(keys: Sequence[str], tables: Tables) -> dict[str, str]:
    """The uri of each of ``keys`` found in the images table (or, without one, the files table)."""
    table = tables["images"] if tables["images"] is not None else tables["files"]
    if table is None or not keys:
        return {}
    found = table.where(["key", "uri"], "key", keys)
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


def _images(table: Parts | None) -> dict[str, Any]:
    if table is None:
        return {"present": False}
    statuses = _value_counts(part["status"] for part in table.scan(["status"]))
    return {"present": True, "total": table.rows(), "by_status": {status: 0 for status in STATUSES} | statuses}


def _total(table: Parts | None) -> dict[str, Any]:
    return {"present": False} if table is None else {"present": True, "total": table.rows()}


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


MEMBER_COLUMNS = ("key", "uri", "group", "kept", "reason", "similarity", "kept_key")


def _largest(table: Parts, ids: np.ndarray, sizes: np.ndarray, removed: np.ndarray,
             limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` groups, largest first (ties: group id); a group of one only if its image is removed."""
    candidates = np.flatnonzero((sizes > 1) | (removed > 0))
    chosen = ids[candidates[np.lexsort((ids[candidates], -sizes[candidates]))][:limit]]
    if not len(chosen):
        return []
    members = table.where(MEMBER_COLUMNS, "group", chosen.tolist())
    groups = members["group"].to_numpy()
    return [_group(members.take(pa.array(np.flatnonzero(groups == group))), group) for group in chosen]


def _duplicates(table: Parts | None, config: ReportConfig) -> dict[str, Any]:
    if table is None:
        return {"present": False}
    reasons = []  # the reasons of the removed rows only

    def groups_and_removed() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for part in table.scan(["group", "kept", "reason"]):
            kept = part["kept"].to_numpy(zero_copy_only=False).astype(bool)
            reasons.append(pc.fill_null(part.filter(pc.invert(part["kept"]))["reason"], "unknown"))
            yield part["group"].to_numpy(), (~kept).astype(np.int64)

    ids, sizes, removed = id_counts(groups_and_removed())
    size_values, size_counts = np.unique(sizes, return_counts=True)
    return {
        "present": True, "images": int(sizes.sum()), "kept": int(sizes.sum() - removed.sum()),
        "removed": int(removed.sum()), "by_reason": _value_counts(reasons),
        "groups": len(ids), "duplicate_groups": int((sizes > 1).sum()),
        "group_sizes": {str(int(size)): int(n) for size, n in zip(size_values, size_counts)},
        "largest": _largest(table, ids, sizes, removed, max(LARGEST_GROUPS, config.examples)),
    }


def finest_sizes(table: Parts) -> np.ndarray:
    """Images per finest-level cluster."""
    return id_counts(part["cluster"].to_numpy() for part in table.scan(["cluster"]))[1]


def _per_level(table: Parts, finest: int) -> list[int]:
    """Distinct labels used at each level, finest first (``finest``: the finest level's, when no row has levels)."""
    seen: list[np.ndarray] = []
    flat = False
    for part in table.scan(["levels"]):
        levels = part["levels"].combine_chunks()
        lengths = pc.list_value_length(levels).to_numpy(zero_copy_only=False)
        if not len(lengths):
            continue
        if lengths.max() == 0:
            flat = True
            continue
        labels = pc.list_flatten(levels).to_numpy()
        parents = pc.list_parent_indices(levels).to_numpy()
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        depth = np.arange(len(labels)) - starts[parents]
        for level in range(int(lengths.max())):
            found = np.unique(labels[depth == level])
            if level < len(seen):
                seen[level] = np.union1d(seen[level], found)
            else:
                seen.append(found)
    if not seen:
        return [finest] if flat else []
    return [len(labels) for labels in seen]


def _cluster_examples(table: Parts, ids: np.ndarray, sizes: np.ndarray, examples: int,
                      seed: int) -> list[dict[str, Any]]:
    """Up to ``examples`` random clusters (``seed``), each with up to ``examples`` random members (keys, uris)."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(ids), size=min(examples, len(ids)), replace=False))
    if not len(chosen):
        return []
    members = table.where(["cluster", "key", "uri"], "cluster", ids[chosen].tolist())
    labels = members["cluster"].to_numpy()
    shown = []
    for i in chosen:
        rows = np.flatnonzero(labels == ids[i])  # the cluster's members in table order
        picked = pa.array(np.sort(rng.choice(rows, size=min(examples, len(rows)), replace=False)))
        shown.append({"cluster": int(ids[i]), "size": int(sizes[i]), "keys": members["key"].take(picked).to_pylist(),
                      "uris": members["uri"].take(picked).to_pylist()})
    return shown


def _clusters(table: Parts | None, config: ReportConfig) -> dict[str, Any]:
    if table is None:
        return {"present": False}
    ids, sizes, _ = id_counts(part["cluster"].to_numpy() for part in table.scan(["cluster"]))
    finest = ({"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())}
              if len(sizes) else {"min": None, "median": None, "max": None})
    return {"present": True, "images": int(sizes.sum()), "clusters": len(sizes), "per_level": _per_level(table, len(ids)),
            "finest_sizes": finest,
            "shown": _cluster_examples(table, ids, sizes, config.examples, config.seed) if config.examples > 0 else []}


def _selection(table: Parts | None) -> dict[str, Any]:
    if table is None:
        return {"present": False}
    return {"present": True, "selected": table.rows(),
            "by_method": _value_counts(part["method"] for part in table.scan(["method"]))}


def _shards(table: Parts | None, out: Location) -> dict[str, Any]:
    if table is None:
        return {"present": False}
    folder = out / SHARD_DIR
    names = sorted({name for part in table.scan(["shard"]) for name in pc.unique(part["shard"]).to_pylist()})
    paths = [folder / Path(name).name for name in names]
    sizes = [output.size(path) for path in paths]
    on_disk = [size for size in sizes if size is not None]
    return {"present": True, "count": len(paths), "samples": table.rows(), "bytes": int(sum(on_disk)),
            "missing": len(paths) - len(on_disk), "index": output.is_file(folder / INDEX_NAME)}


def _unreadable(table: Parts | None) -> dict[str, Any]:
    """Files ingest refused (status other than ok): the first :data:`UNREADABLE_LISTED` with their reasons."""
    if table is None:
        return {"present": False}
    total, rows = 0, []
    for part in table.scan(["key", "uri", "set", "role", "status", "error"]):
        rejected = part.filter(pc.not_equal(part["status"], "ok"))
        total += len(rejected)
        for row in rejected.slice(0, UNREADABLE_LISTED - len(rows)).to_pylist():
            rows.append({**{k: v for k, v in row.items() if k != "error"}, "reason": row["error"]})
    return {"present": True, "total": total, "listed": rows, "truncated": total > len(rows)}


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

