"""The run report's pictures: the images it shows read in one call, the cluster-size histogram and the
contact sheets of duplicate groups (kept image, then its copies) and of cluster members, as PNG bytes, and
small JPEG thumbnails for the HTML page."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from dinolab.core.contact_sheet import contact_sheet
from dinolab.curate.lakes import Reader, read_uri
from dinolab.curate.lakes import parse as parse_uri
from dinolab.curate.report.counts import Tables, finest_sizes
from dinolab.pretrain.data.images import ImageDecodeError, decode_image, load_image
from dinolab.schemas.config import ReportConfig

SHEET_TILE = 128
THUMB = 96
LABEL_WIDTH = 200
GAP = 4


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


def shown_uris(report: dict[str, Any]) -> list[str | None]:
    uris: list[str | None] = []
    for group in report["duplicates"].get("largest", []):
        if group.get("shown"):
            uris += [group["kept_uri"], *group["uris"]]
    for cluster in report["clusters"].get("shown", []):
        uris += cluster["uris"]
    return uris


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)  # smaller than the default 6 on contact sheets, in half the time
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


def picture(name: str, report: dict[str, Any], tables: Tables, config: ReportConfig, pictures: Pictures) -> bytes:
    if name == "cluster_sizes.png":
        return cluster_size_plot(finest_sizes(tables["clusters"]))
    if name == "duplicate_groups.png":
        return _png(duplicate_sheet(report["duplicates"]["largest"], config.examples, pictures))
    return _png(cluster_sheet(report["clusters"]["shown"], pictures))


def thumbnail_uri(image: Image.Image | None) -> str | None:
    """A ``data:`` URI of ``image`` as a small JPEG (``None`` for an unreadable one)."""
    if image is None:
        return None
    buffer = io.BytesIO()
    ImageOps.contain(image.convert("RGB"), (SHEET_TILE, SHEET_TILE)).save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

