"""The run report: counts of every table, the largest duplicate groups, rejected files, and pictures.

Reads whatever tables of ``OUT/tables/`` exist (an absent table is reported as ``{"present": false}``,
one with a wrong schema raises :class:`~schemas.tables.SchemaError`) and writes ``OUT/report/``:
``report.json``, a self-contained ``report.html`` and, when their tables exist, ``cluster_sizes.png``
(histogram of finest-level cluster sizes), ``duplicate_groups.png`` (kept image, then its copies) and
``cluster_members.png`` (random members of random clusters, chosen with ``config.seed``).

``report.html`` travels alone: every picture is embedded (``data:`` URIs), each shown image is captioned
with its key (a link to its source file), and relative links lead to the tables, shards and
``report.json`` when it sits in ``OUT/report/``::

    report = write_report(out, ReportConfig(examples=8, seed=0), stage_records)
    report["duplicates"]["removed"], report["figures"]

Counts are computed with pyarrow/numpy; only rejected files, the largest groups and the sampled cluster
members become Python objects.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageDraw, ImageOps

from curate import output
from curate.lakes import Reader, read_partition, read_uri
from curate.lakes import parse as parse_uri
from curate.output import Location, RemotePath
from curate.tables import done_parts, read_table, table_dir
from features.retrieval.contact_sheet import contact_sheet
from pretrain.data.images import ImageDecodeError, decode_image, load_image
from schemas.config import ReportConfig
from schemas.tables import ROLES, TABLES

REPORT_DIR = "report"
SHARD_DIR = "shards"
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
SHEET_TILE = 128
THUMB = 96
LABEL_WIDTH = 200
GAP = 4
MISSING = "–"

Tables = dict[str, pa.Table | None]


# ----------------------------------------------------------------------------------------------- tables


def _load(out: Location) -> Tables:
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


def _finest_sizes(table: pa.Table) -> np.ndarray:
    """Images per finest-level cluster."""
    return np.unique(table["cluster"].to_numpy(), return_counts=True)[1]


def _per_level(table: pa.Table) -> list[int]:
    """Distinct labels used at each level, finest first."""
    levels = table["levels"].combine_chunks()
    lengths = pc.list_value_length(levels).to_numpy(zero_copy_only=False)
    if not len(lengths):
        return []
    if lengths.max() == 0:
        return [len(_finest_sizes(table))]
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
    sizes = _finest_sizes(table)
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
            "missing": len(paths) - len(on_disk), "index": output.is_file(folder / "index.json")}


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
    index = [f"{SHARD_DIR}/index.json"] if output.is_file(out / SHARD_DIR / "index.json") else []
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


def _collect(out: Location, tables: Tables, config: ReportConfig, stages: Sequence[dict]) -> dict[str, Any]:
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
    return _collect(out, _load(out), config, stages)


# ---------------------------------------------------------------------------------------------- pictures


def _open(uri: str | None, side: int, storage_options: Mapping[str, Any] | None = None) -> Image.Image | None:
    """The image at ``uri`` (of any lake kind) shrunk to at most ``side`` pixels, or ``None`` if it cannot be read."""
    if uri is None:
        return None
    try:
        if parse_uri(uri).kind == "local":
            return load_image(uri, max_side=side, min_side=1)
        return decode_image(read_uri(uri, storage_options), uri, max_side=side, min_side=1).image
    except (ImageDecodeError, OSError, ValueError):
        return None


Pictures = Mapping[str, "Image.Image | None"]
"""Decoded pictures by uri (``None``: unreadable), shrunk to at most :data:`SHEET_TILE` pixels."""


def load_pictures(uris: Sequence[str | None], read: Reader) -> dict[str, Image.Image | None]:
    """Every picture the report shows, read in one call of ``read`` (local files directly)."""
    pictures: dict[str, Image.Image | None] = {}
    others = []
    for uri in dict.fromkeys(uri for uri in uris if uri is not None):
        try:
            local = parse_uri(uri).kind == "local"
        except ValueError:
            pictures[uri] = None
            continue
        if local:
            pictures[uri] = _open(uri, SHEET_TILE)
        else:
            others.append(uri)
    for uri, data in read(others) if others else ():
        try:
            pictures[uri] = None if isinstance(data, BaseException) else decode_image(
                data, uri, max_side=SHEET_TILE, min_side=1).image
        except (ImageDecodeError, OSError, ValueError):
            pictures[uri] = None
    return pictures


def _shown_uris(report: dict[str, Any]) -> list[str | None]:
    uris: list[str | None] = []
    for group in report["duplicates"].get("largest", []):
        if group.get("shown"):
            uris += [group["kept_uri"], *group["uris"]]
    for cluster in report["clusters"].get("shown", []):
        uris += cluster["uris"]
    return uris


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def cluster_size_plot(sizes: np.ndarray) -> bytes:
    """PNG histogram (matplotlib, Agg) of images per finest-level cluster."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    bins = np.arange(sizes.max() + 2) - 0.5 if sizes.max() < 60 else 40
    axis.hist(sizes, bins=bins, color="#3b6ea5", edgecolor="white")
    axis.set(xlabel="images per cluster", ylabel="clusters", title=f"{len(sizes):,} finest-level clusters")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def duplicate_sheet(groups: Sequence[dict[str, Any]], examples: int, pictures: Pictures) -> Image.Image:
    """Contact sheet of the ``shown`` groups: the kept image, then up to ``examples`` removed members."""
    rows = []
    for group in [g for g in groups if g.get("shown")]:
        members = list(zip(group["keys"], group["uris"], group["reasons"], group["similarities"]))
        copies = [(pictures.get(uri), key, sim if sim is not None else 1.0 if reason == "exact" else float("nan"))
                  for key, uri, reason, sim in members if key != group["kept_key"]][:examples]
        rows.append((pictures.get(group["kept_uri"]), str(group["kept_key"]), copies))
    return contact_sheet(rows, tile=SHEET_TILE)


def _tile(image: Image.Image | None) -> Image.Image:
    if image is None:
        tile = Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
        ImageDraw.Draw(tile).line((0, 0, THUMB, THUMB), fill="red", width=3)
        return tile
    return ImageOps.pad(ImageOps.contain(image.convert("RGB"), (THUMB, THUMB)), (THUMB, THUMB), color="white")


def cluster_sheet(shown: Sequence[dict[str, Any]], pictures: Pictures) -> Image.Image:
    """The ``shown`` clusters, one row each: a label, then their members."""
    columns = max(len(cluster["uris"]) for cluster in shown)
    sheet = Image.new("RGB", (LABEL_WIDTH + columns * (THUMB + GAP), len(shown) * (THUMB + GAP)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, cluster in enumerate(shown):
        top = r * (THUMB + GAP)
        label = f"cluster {cluster['cluster']} / {cluster['size']:,} images"
        draw.text((GAP, top + THUMB // 2 - 6), label, fill="black")
        for c, uri in enumerate(cluster["uris"]):
            sheet.paste(_tile(pictures.get(uri)), (LABEL_WIDTH + c * (THUMB + GAP), top))
    return sheet


def _picture(name: str, report: dict[str, Any], tables: Tables, config: ReportConfig, pictures: Pictures) -> bytes:
    if name == "cluster_sizes.png":
        return cluster_size_plot(_finest_sizes(tables["clusters"]))
    if name == "duplicate_groups.png":
        return _png(duplicate_sheet(report["duplicates"]["largest"], config.examples, pictures))
    return _png(cluster_sheet(report["clusters"]["shown"], pictures))


def _thumbnail_uri(image: Image.Image | None) -> str | None:
    """A ``data:`` URI of ``image`` as a small JPEG (``None`` for an unreadable one)."""
    if image is None:
        return None
    buffer = io.BytesIO()
    ImageOps.contain(image.convert("RGB"), (SHEET_TILE, SHEET_TILE)).save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------------- writing


def write_report(out: str | Path | RemotePath, config: ReportConfig, stages: Sequence[dict] = (),
                 storage_options: Mapping[str, Any] | None = None, read: Reader | None = None) -> dict[str, Any]:
    """Write ``OUT/report/`` (pictures, ``report.html``, then ``report.json``); returns the report as JSON reads it.

    Pictures of an earlier run whose table is gone are deleted; nothing else in the folder is touched.
    The images shown are read by ``read`` (default: the lake, with ``storage_options``). ``stages`` gets a
    ``report`` row (its seconds up to the HTML) unless it has one.
    """
    started = time.perf_counter()
    read = read or functools.partial(read_partition, storage_options=storage_options)
    out = output.location(out, storage_options)
    folder = out / REPORT_DIR
    output.makedirs(folder)
    tables = _load(out)
    report = _collect(out, tables, config, stages)
    pictures = load_pictures(_shown_uris(report), read)
    figures = {}
    for name in PICTURES:
        if name in report["figures"]:
            figures[name] = _picture(name, report, tables, config, pictures)
            output.write_bytes(folder / name, figures[name])
        else:
            output.remove(folder / name)
    if not any(stage.get("stage") == "report" for stage in report["stages"]):
        report["stages"].append({"stage": "report", "images_in": None, "images_out": None,
                                 "seconds": round(time.perf_counter() - started, 3), "tasks": 1})
    text = json.dumps(report, indent=1, ensure_ascii=False, allow_nan=False)
    report = json.loads(text)
    embedded = {"figures": {name: "data:image/png;base64," + base64.b64encode(data).decode("ascii")
                            for name, data in figures.items()},
                "thumbnails": {uri: _thumbnail_uri(image) for uri, image in pictures.items()}}
    output.write_bytes(folder / "report.html", render_html(report, embedded).encode())
    output.write_bytes(folder / "report.json", (text + "\n").encode())
    return report


# ------------------------------------------------------------------------------------------------- HTML

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:72em;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:.2em .6em;border-bottom:1px solid #eee;text-align:left;
vertical-align:top}th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.absent{color:#a33}.uri{font-family:monospace;font-size:.9em;word-break:break-all}
figure{margin:1em 0}img{max-width:100%;border:1px solid #ddd}
.gallery{display:flex;flex-wrap:wrap;gap:.5em;margin:.5em 0 1em}.gallery figure{width:136px;margin:0}
.gallery figcaption,.keys{font-family:monospace;font-size:.85em;word-break:break-all}
.gallery .kept img{border:3px solid #2860c8}.unreadable{width:128px;height:128px;background:#ccc;display:flex;
align-items:center;justify-content:center}ul.files{columns:2;font-family:monospace;font-size:.9em}
"""


def _escape(value: Any) -> str:
    return html.escape(str(value))


def _cell(value: Any) -> str:
    """One ``<td>``: numbers right-aligned (seconds with 3 decimals), missing values as a dash."""
    if value is None:
        return f'<td class="n">{MISSING}</td>'
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, int):
        return f'<td class="n">{value:,}</td>'
    if isinstance(value, float):
        return f'<td class="n">{value:.3f}</td>'
    return f"<td>{_escape(value)}</td>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _absent(name: str) -> str:
    return f'<p class="absent">{_escape(name)}: absent (the stage that writes it has not run)</p>'


def _stages_html(report: dict[str, Any]) -> str:
    rows = [[s.get("stage"), s.get("images_in"), s.get("images_out"), s.get("seconds")] for s in report["stages"]]
    present = "".join(f"<tr><td>{_escape(name)}</td>" + ("<td>present</td>" if ok else '<td class="absent">absent</td>')
                      + "</tr>" for name, ok in report["tables"].items())
    stages = _table(["stage", "images in", "images out", "seconds"], rows) if rows else "<p>no stage records</p>"
    return f"<h2>Stages</h2>{stages}<h3>Tables</h3><table><tr><th>table</th><th>status</th></tr>{present}</table>"


def _sets_html(report: dict[str, Any]) -> str:
    columns = ["files", *STATUSES, "embedded"]
    sets = [[name, row["role"], *(row[c] for c in columns)] for name, row in report["sets"].items()]
    roles = [[role, *(row[c] for c in columns)] for role, row in report["roles"].items()]
    if not sets:
        listed = any(report["tables"][name] for name in ("files", "images", "embeddings"))
        return "<h2>Sets</h2>" + ("<p>no images listed</p>" if listed else _absent("files / images / embeddings"))
    return ("<h2>Sets</h2>" + _table(["set", "role", *columns], sets)
            + "<h3>Roles</h3>" + _table(["role", *columns], roles))


def _counts_html(report: dict[str, Any]) -> str:
    rows: list[list[Any]] = []
    absent = []

    def add(name: str, section: dict[str, Any], fields: Sequence[tuple[str, Any]]) -> None:
        if not section["present"]:
            absent.append(name)
            return
        rows.extend([f"{name}: {label}", value] for label, value in fields)

    add("files", report["files"], [("listed", report["files"].get("total"))])
    images = report["images"]
    add("images", images, [("total", images.get("total"))]
        + [(f"status {s}", n) for s, n in images.get("by_status", {}).items()])
    add("embeddings", report["embeddings"], [("vectors", report["embeddings"].get("total"))])
    dup = report["duplicates"]
    add("duplicates", dup, [(k, dup.get(k)) for k in ("images", "kept", "removed", "groups", "duplicate_groups")]
        + [(f"removed as {r}", n) for r, n in dup.get("by_reason", {}).items()])
    clusters = report["clusters"]
    sizes = clusters.get("finest_sizes", {})
    add("clusters", clusters, [("images", clusters.get("images")), ("finest clusters", clusters.get("clusters"))]
        + [(f"level {i + 1} clusters used", n) for i, n in enumerate(clusters.get("per_level", []))]
        + [(f"finest size {k}", v) for k, v in sizes.items()])
    sel = report["selection"]
    add("selection", sel, [("selected", sel.get("selected"))]
        + [(f"by {m}", n) for m, n in sel.get("by_method", {}).items()])
    shards = report["shards"]
    add("shards", shards, [(k, shards.get(k)) for k in ("count", "samples", "bytes", "missing")]
        + [("index.json", "present" if shards.get("index") else "missing")])
    return "<h2>Counts</h2>" + _table(["count", "value"], rows) + "".join(_absent(name) for name in absent)


def _members(group: dict[str, Any]) -> str:
    parts = []
    for key, reason, sim in zip(group["keys"], group["reasons"], group["similarities"]):
        detail = "kept" if key == group["kept_key"] else reason or "unknown"
        parts.append(f"{_escape(key)} ({_escape(detail)}{'' if sim is None else f', {sim:.3f}'})")
    more = group["size"] - len(group["keys"])
    return ", ".join(parts) + (f", … {more:,} more" if more > 0 else "")


def _duplicates_html(report: dict[str, Any]) -> str:
    dup = report["duplicates"]
    if not dup["present"]:
        return "<h2>Duplicate groups</h2>" + _absent("duplicates")
    sizes = _table(["group size", "groups"], [[int(size), n] for size, n in dup["group_sizes"].items()])
    rows = "".join(f"<tr>{_cell(g['group'])}{_cell(g['size'])}{_cell(g['kept_key'])}<td>{_members(g)}</td></tr>"
                   for g in dup["largest"])
    largest = (f"<table><tr><th>group</th><th>size</th><th>kept</th><th>members</th></tr>{rows}</table>"
               if rows else "<p>no duplicate groups</p>")
    return f"<h2>Duplicate groups</h2><h3>Group-size distribution</h3>{sizes}<h3>Largest groups</h3>{largest}"


def _unreadable_html(report: dict[str, Any]) -> str:
    bad = report["unreadable"]
    if not bad["present"]:
        return "<h2>Unreadable files</h2>" + _absent("images")
    rows = "".join("<tr>" + "".join(_cell(r[k]) for k in ("key", "set", "role", "status", "reason"))
                   + f'<td class="uri">{_escape(r["uri"])}</td></tr>' for r in bad["listed"])
    note = f"<p>{bad['total']:,} files refused" + (f", the first {len(bad['listed']):,} listed" if bad["truncated"]
                                                    else "") + "</p>"
    head = "".join(f"<th>{h}</th>" for h in ("key", "set", "role", "status", "reason", "uri"))
    return f"<h2>Unreadable files</h2>{note}" + (f"<table><tr>{head}</tr>{rows}</table>" if rows else "")


def _source_href(uri: str | None) -> str | None:
    """A link a browser follows to the source of ``uri``: the file, URL or container; ``None`` if there is none."""
    try:
        source = parse_uri(uri) if uri else None
    except ValueError:
        return None
    if source is None:
        return None
    if source.kind == "local":
        return Path(uri).absolute().as_uri()
    return source.location if source.location.split("://", 1)[0].lower() in ("http", "https", "file") else None


def _link(text: str, href: str | None) -> str:
    return f'<a href="{_escape(href)}">{_escape(text)}</a>' if href else _escape(text)


def _thumb(key: str, uri: str | None, detail: str, embedded: dict[str, Any], kept: bool = False) -> str:
    data = embedded.get("thumbnails", {}).get(uri)
    picture = (f'<img src="{data}" alt="{_escape(key)}">' if data else '<div class="unreadable">unreadable</div>')
    caption = f"{_link(key, _source_href(uri))}<br>{_escape(detail)}"
    return f'<figure{" class=kept" if kept else ""}>{picture}<figcaption>{caption}</figcaption></figure>'


def _keys(keys: Sequence[str], more: int = 0) -> str:
    listed = ", ".join(_escape(key) for key in keys) + (f", … {more:,} more" if more > 0 else "")
    return f'<p class="keys">keys: {listed}</p>'


def _groups_gallery(report: dict[str, Any], embedded: dict[str, Any]) -> str:
    parts = []
    for group in report["duplicates"].get("largest", []):
        if not group.get("shown"):
            continue
        members = list(zip(group["keys"], group["uris"], group["reasons"], group["similarities"]))
        figures = [] if group["kept_key"] in group["keys"] else [
            _thumb(str(group["kept_key"]), group.get("kept_uri"), "kept (outside the pool)", embedded, kept=True)]
        for key, uri, reason, sim in members:
            score = "" if sim is None else f" {sim:.3f}"
            detail = "kept" if key == group["kept_key"] else (reason or "unknown") + score
            figures.append(_thumb(key, uri, detail, embedded, kept=key == group["kept_key"]))
        parts.append(f"<h4>group {group['group']}: {group['size']:,} images, kept {_escape(group['kept_key'])}</h4>"
                     f'<div class="gallery">{"".join(figures)}</div>'
                     + _keys(group["keys"], group["size"] - len(group["keys"])))
    return "".join(parts)


def _clusters_gallery(report: dict[str, Any], embedded: dict[str, Any]) -> str:
    parts = []
    for cluster in report["clusters"].get("shown", []):
        figures = "".join(_thumb(key, uri, f"cluster {cluster['cluster']}", embedded)
                          for key, uri in zip(cluster["keys"], cluster["uris"]))
        parts.append(f"<h4>cluster {cluster['cluster']}: {cluster['size']:,} images, {len(cluster['keys'])} shown</h4>"
                     f'<div class="gallery">{figures}</div>' + _keys(cluster["keys"]))
    return "".join(parts)


def _pictures_html(report: dict[str, Any], embedded: dict[str, Any]) -> str:
    """The histogram, then every duplicate group and cluster shown: embedded pictures captioned with their keys."""
    sections = []
    figures = embedded.get("figures", {})
    if "cluster_sizes.png" in report["figures"] and "cluster_sizes.png" in figures:
        sections.append(f'<figure><img src="{figures["cluster_sizes.png"]}" alt="cluster sizes">'
                        f'<figcaption>{_link("cluster_sizes.png", "cluster_sizes.png")}</figcaption></figure>')
    for name, title, gallery in (("duplicate_groups.png", "Duplicate groups shown", _groups_gallery),
                                 ("cluster_members.png", "Clusters shown", _clusters_gallery)):
        if name in report["figures"]:
            sections.append(f"<h3>{title}</h3><p>(also as one picture: {_link(name, name)})</p>"
                            + gallery(report, embedded))
    return "<h2>Pictures</h2>" + ("".join(sections) or '<p class="absent">no pictures: their tables are absent</p>')


def _files_html(report: dict[str, Any]) -> str:
    """Links to the run's files, relative to ``OUT/report/`` (they work in the output folder)."""
    outputs = report.get("outputs", {})
    items = [f"<li>{_link('report/report.json', 'report.json')}</li>"]
    items += [f"<li>{_link(path, '../' + path)}</li>" for path in outputs.get("run", []) + outputs.get("index", [])]
    counts = outputs.get("counts", {})

    def listed(paths: list[str], total: int, folder: str) -> list[str]:
        more = [f"<li>… {total - len(paths):,} more in {_escape(folder)}/</li>"] if total > len(paths) else []
        return [f"<li>{_link(path, '../' + path)}</li>" for path in paths] + more

    for name, parts in outputs.get("tables", {}).items():
        items += listed(parts, counts.get(f"tables/{name}", len(parts)), f"tables/{name}")
    items += listed(outputs.get("shards", []), counts.get("shards", 0), SHARD_DIR)
    return f'<h2>Files</h2><p>Relative to the output folder.</p><ul class="files">{"".join(items)}</ul>'


def render_html(report: dict[str, Any], embedded: Mapping[str, Any] | None = None) -> str:
    """The report as one self-contained HTML page: ``embedded`` holds the ``data:`` URIs of its pictures
    (``figures`` by file name, ``thumbnails`` by uri); without them only the captions show."""
    embedded = dict(embedded or {})
    sections = (_stages_html, _sets_html, _counts_html, _duplicates_html, _unreadable_html)
    body = "".join(section(report) for section in sections) + _pictures_html(report, embedded) + _files_html(report)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Curation report</title>'
            f"<style>{STYLE}</style></head><body><h1>Curation report</h1>{body}</body></html>\n")
