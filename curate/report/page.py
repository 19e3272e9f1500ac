"""The run report as one self-contained HTML page: tables of the counts, the pictures embedded as
``data:`` URIs, each shown image captioned with its key (a link to its source file), and relative links to
the run's tables, shards and ``report.json``."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dinolab.core.storage import SHARD_DIR
from dinolab.curate.lakes import parse as parse_uri
from dinolab.curate.report.counts import STATUSES

MISSING = "–"

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

