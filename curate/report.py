"""The curation report: counts after every step, a cluster-size histogram and contact sheets.

Writes ``WORK/report/``: ``report.json`` (every step's summary), ``report.md`` (the same as a short
table), ``cluster_sizes.png``, ``duplicates.png`` (one row per example duplicate group, kept image
first) and ``cluster_examples.png`` (one row of random members per random level-1 cluster).

Example::

    write_report(work, pool_root=Path("images/pool"), seed=0)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curate.manifest import (
    atomic_path,
    atomic_text,
    read_csv,
    read_json,
    read_lines,
    write_json,
)

STEPS = ("dedup", "cluster", "select")


def collect_counts(work: Path) -> dict[str, Any]:
    """Image counts of every set and the summary of every step that has run."""
    counts: dict[str, Any] = {"sets": {}}
    for embed_file in sorted(work.glob("*/embed.json")):
        files = read_lines(embed_file.parent / "files.txt")
        counts["sets"][embed_file.parent.name] = {"files": len(files), **read_json(embed_file)}
    for step in STEPS:
        summary = work / step / "summary.json"
        if summary.is_file():
            counts[step] = read_json(summary)
    return counts


def plot_cluster_sizes(sizes: np.ndarray, path: Path, title: str) -> None:
    """Histogram of cluster sizes (log-scaled counts) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    bins = np.arange(0, sizes.max() + 2) - 0.5 if sizes.max() < 60 else 40
    axis.hist(sizes, bins=bins, color="#3b6ea5", edgecolor="white")
    axis.set_xlabel("images per cluster")
    axis.set_ylabel("clusters")
    axis.set_yscale("log")
    axis.set_title(title)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)


def contact_sheet(
    rows: Sequence[Sequence[Path]], labels: Sequence[str], path: Path, thumb: int = 64, label_width: int = 120
) -> None:
    """A PNG grid: one row per group, a text label on the left, ``thumb``-pixel thumbnails after it.

    Files that cannot be opened are drawn as a grey square with a red cross.
    """
    from PIL import Image, ImageDraw

    columns = max((len(r) for r in rows), default=1)
    gap = 4
    sheet = Image.new(
        "RGB", (label_width + columns * (thumb + gap), max(1, len(rows)) * (thumb + gap)), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for r, (files, label) in enumerate(zip(rows, labels)):
        top = r * (thumb + gap)
        draw.text((4, top + thumb // 2 - 6), label[:20], fill="black")
        for c, file in enumerate(files):
            left = label_width + c * (thumb + gap)
            try:
                with Image.open(file) as image:
                    tile = image.convert("RGB").resize((thumb, thumb))
            except Exception:  # noqa: BLE001 - an unreadable file must not stop the report
                tile = Image.new("RGB", (thumb, thumb), "grey")
                ImageDraw.Draw(tile).line((0, 0, thumb, thumb), fill="red", width=3)
            sheet.paste(tile, (left, top))
    with atomic_path(path) as temporary:
        sheet.save(temporary, format="PNG")


def duplicate_groups(work: Path, limit: int) -> list[list[str]]:
    """Up to ``limit`` largest duplicate groups, kept image first."""
    groups: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for row in read_csv(work / "dedup" / "components.csv"):
        if int(row["component_size"]) > 1:
            groups[int(row["component"])].append((-int(row["kept"]), row["name"]))
    ordered = sorted(groups.values(), key=lambda members: (-len(members), sorted(members)[0][1]))
    return [[name for _, name in sorted(members)] for members in ordered[:limit]]


def cluster_examples(work: Path, clusters: int, members: int, seed: int) -> list[tuple[int, list[str]]]:
    """``members`` random names from each of ``clusters`` random non-empty level-1 clusters."""
    rng = np.random.default_rng(seed)
    by_cluster: dict[int, list[str]] = defaultdict(list)
    for row in read_csv(work / "cluster" / "clusters.csv"):
        by_cluster[int(row["level1"])].append(row["name"])
    chosen = sorted(rng.choice(sorted(by_cluster), size=min(clusters, len(by_cluster)), replace=False))
    return [
        (int(c), sorted(rng.choice(by_cluster[c], size=min(members, len(by_cluster[c])), replace=False)))
        for c in chosen
    ]


def write_report(work: Path, pool_root: Path | None = None, seed: int = 0, examples: int = 8) -> dict[str, Any]:
    """Write every report file that the finished steps allow; returns the counts."""
    out = work / "report"
    counts = collect_counts(work)
    if pool_root is None and "pool" in counts["sets"]:
        pool_root = Path(counts["sets"]["pool"]["root"])
    figures = []
    if "cluster" in counts:
        from curate.kmeans import ClusterTree

        sizes = ClusterTree.load(work / "cluster").sizes(1)
        plot_cluster_sizes(sizes, out / "cluster_sizes.png", f"{len(sizes)} level-1 clusters")
        figures.append("cluster_sizes.png")
        if pool_root is not None:
            rows = cluster_examples(work, examples, examples, seed)
            contact_sheet(
                [[pool_root / n for n in names] for _, names in rows],
                [f"cluster {c}" for c, _ in rows],
                out / "cluster_examples.png",
            )
            figures.append("cluster_examples.png")
    if "dedup" in counts and pool_root is not None:
        groups = duplicate_groups(work, examples)
        if groups:
            contact_sheet(
                [[pool_root / n for n in names] for names in groups],
                [f"group of {len(g)}" for g in groups],
                out / "duplicates.png",
            )
            figures.append("duplicates.png")
    counts["figures"] = figures
    write_json(out / "report.json", counts)
    with atomic_text(out / "report.md") as handle:
        handle.write(markdown_summary(counts))
    return counts


def markdown_summary(counts: dict[str, Any]) -> str:
    lines = ["# Curation report", "", "| step | count |", "|---|---:|"]
    for name, info in counts["sets"].items():
        lines.append(f"| {name}: image files | {info['files']} |")
    if "dedup" in counts:
        dedup = counts["dedup"]
        lines.append(f"| dedup: undecodable pool files | {dedup['undecodable']} |")
        lines.append(f"| dedup: near-duplicate pairs (cos >= {dedup['threshold']}) | {dedup['pairs']} |")
        lines.append(f"| dedup: duplicate groups | {dedup['duplicate_groups']} |")
        for reason, number in dedup["removed"].items():
            lines.append(f"| dedup: removed ({reason}) | {number} |")
        lines.append(f"| dedup: kept | {dedup['kept']} |")
    if "cluster" in counts:
        for level, (k, empty) in enumerate(zip(counts["cluster"]["k"], counts["cluster"]["empty_clusters"]), 1):
            lines.append(f"| cluster: level {level} clusters (empty) | {k} ({empty}) |")
    if "select" in counts:
        select = counts["select"]
        lines.append(f"| select ({select['method']}): candidates | {select['candidates']} |")
        lines.append(f"| select ({select['method']}): selected | {select['selected']} |")
    lines += [""] + [f"![{f}]({f})" for f in counts.get("figures", [])] + [""]
    return "\n".join(lines)
