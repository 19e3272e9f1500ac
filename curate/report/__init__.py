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

One module a job: :mod:`~curate.report.counts` gathers the numbers, :mod:`~curate.report.pictures` draws
the pictures and :mod:`~curate.report.page` renders the HTML; :func:`write_report` runs the three and writes.
"""

from __future__ import annotations

import base64
import functools
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dinolab.curate import output
from dinolab.curate.lakes import Reader, read_partition
from dinolab.curate.output import RemotePath
from dinolab.curate.report.counts import PICTURES, collect, gather, load_tables  # noqa: F401 - collect is re-exported
from dinolab.curate.report.page import render_html
from dinolab.curate.report.pictures import _open, load_pictures, picture, shown_uris, thumbnail_uri  # noqa: F401
from dinolab.schemas.config import ReportConfig

REPORT_DIR = "report"


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
    tables = load_tables(out)
    report = gather(out, tables, config, stages)
    pictures = load_pictures(shown_uris(report), read)
    figures = {}
    for name in PICTURES:
        if name in report["figures"]:
            figures[name] = picture(name, report, tables, config, pictures)
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
                "thumbnails": {uri: thumbnail_uri(image) for uri, image in pictures.items()}}
    output.write_bytes(folder / "report.html", render_html(report, embedded).encode())
    output.write_bytes(folder / "report.json", (text + "\n").encode())
    return report

