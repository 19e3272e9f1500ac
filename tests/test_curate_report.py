"""The run report: planted tables in, the same counts, an escaped HTML page and non-blank pictures out."""

import base64
import io
import json
import shutil
import tarfile
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from dinolab.curate.report import write_report
from dinolab.curate.tables import read_table, write_part
from dinolab.schemas.config import ReportConfig
from dinolab.schemas.tables import TABLES, time_columns

HOSTILE = "<b>x&y.png"
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
STAGES = [
    {"stage": "ingest", "images_in": 9, "images_out": 7, "seconds": 1.25, "tasks": 2},
    {"stage": "dedup", "images_in": 6, "images_out": 4, "seconds": 0.5, "tasks": 1},
]


def _table(name, rows):
    stamped = [{column: WHEN for column in time_columns(name)} | row for row in rows]
    return pa.Table.from_pylist(stamped, schema=TABLES[name].schema)


def _image_file(path, seed, size=(48, 40)):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture
def lake(tmp_path):
    """Pool a..f (ok), a broken file, a too-small hostile-named file, and one eval image."""
    folder = tmp_path / "lake"
    folder.mkdir()
    files = [(key, _image_file(folder / f"{key}.png", seed), "pool", "pool", "ok", None)
             for seed, key in enumerate("abcdef")]
    (folder / "broken.png").write_bytes(b"not an image")
    files.append(("broken", str(folder / "broken.png"), "pool", "pool", "error", "cannot identify image file"))
    files.append(("hostile", _image_file(folder / HOSTILE, 9, (10, 10)), "pool", "pool", "filtered",
                  "image is 10x10, smaller than 32 px"))
    files.append(("eval-q", _image_file(folder / "q.png", 7), "eval", "bench", "ok", None))
    return files


def _files_and_images(out, lake):
    write_part(out, "files", 0, _table("files", [
        {"key": k, "uri": u, "role": r, "set": s, "partition": 0} for k, u, r, s, _, _ in lake]))
    write_part(out, "images", 0, _table("images", [
        {"key": k, "uri": u, "role": r, "set": s, "partition": 0, "status": st, "error": e,
         "bytes": 100, "width": 48, "height": 40, "format": "PNG"} for k, u, r, s, st, e in lake]))


def _later_stages(out, lake):
    uri = {k: u for k, u, *_ in lake}
    ok = [(k, r, s) for k, _, r, s, st, _ in lake if st == "ok"]
    write_part(out, "embeddings", 0, _table("embeddings", [
        {"key": k, "role": r, "set": s, "row": i} for i, (k, r, s) in enumerate(ok)]))
    duplicates = [
        ("a", 0, True, None, None, None), ("b", 0, False, "exact", "a", 1.0), ("c", 0, False, "copy", "a", 0.97),
        ("d", 1, True, None, None, None), ("e", 2, True, None, None, None), ("f", 3, True, None, None, None),
    ]
    write_part(out, "duplicates", 0, _table("duplicates", [
        {"key": k, "uri": uri[k], "group": g, "kept": kept, "reason": reason, "kept_key": kk, "similarity": sim}
        for k, g, kept, reason, kk, sim in duplicates]))
    labels = {"a": [0, 0], "d": [0, 0], "e": [1, 0], "f": [2, 1]}
    write_part(out, "clusters", 0, _table("clusters", [
        {"key": k, "uri": uri[k], "cluster": lv[0], "levels": lv} for k, lv in labels.items()]))
    methods = {"a": "balanced", "d": "balanced", "e": "retrieval"}
    write_part(out, "selection", 0, _table("selection", [
        {"key": k, "uri": uri[k], "method": m, "cluster": labels[k][0]} for k, m in methods.items()]))
    (out / "shards").mkdir()
    with tarfile.open(out / "shards" / "shard-000000.tar", "w") as tar:
        for k in methods:
            tar.add(uri[k], arcname=f"{k}.png")
    (out / "shards" / "index.json").write_text(json.dumps({"shards": ["shard-000000.tar"]}))
    write_part(out, "shards", 0, _table("shards", [
        {"key": k, "shard": "shard-000000.tar", "member": f"{k}.png", "index": i} for i, k in enumerate(methods)]))


@pytest.fixture
def full_out(tmp_path, lake):
    out = tmp_path / "out"
    _files_and_images(out, lake)
    _later_stages(out, lake)
    return out


def test_counts_equal_the_planted_tables(full_out):
    report = write_report(full_out, ReportConfig(examples=4, seed=0), STAGES)
    assert report == json.loads((full_out / "report" / "report.json").read_text())
    assert report["stages"][:-1] == STAGES and report["stages"][-1]["stage"] == "report"  # the report's own row
    assert report["sets"]["pool"] == {"role": "pool", "files": 8, "ok": 6, "error": 1, "filtered": 1, "embedded": 6}
    assert report["sets"]["bench"] == {"role": "eval", "files": 1, "ok": 1, "error": 0, "filtered": 0, "embedded": 1}
    assert report["images"]["by_status"] == {"ok": 7, "error": 1, "filtered": 1}
    dup = report["duplicates"]
    assert (dup["images"], dup["kept"], dup["removed"]) == (6, 4, 2)
    assert dup["by_reason"] == {"copy": 1, "exact": 1}
    assert dup["group_sizes"] == {"1": 3, "3": 1}
    assert dup["duplicate_groups"] == 1
    largest = dup["largest"]
    assert len(largest) == 1
    assert largest[0]["kept_key"] == "a" and largest[0]["size"] == 3
    assert largest[0]["keys"] == ["a", "b", "c"] and largest[0]["reasons"] == [None, "exact", "copy"]
    assert largest[0]["uris"][0].endswith("a.png")
    assert report["clusters"]["per_level"] == [3, 2]
    assert report["clusters"]["finest_sizes"] == {"min": 1, "median": 1.0, "max": 2}
    assert report["selection"] == {"present": True, "selected": 3, "by_method": {"balanced": 2, "retrieval": 1}}
    shards = report["shards"]
    assert (shards["count"], shards["samples"]) == (1, 3)
    assert shards["bytes"] == (full_out / "shards" / "shard-000000.tar").stat().st_size
    rejected = report["unreadable"]
    assert rejected["total"] == 2 and not rejected["truncated"]
    assert {(r["key"], r["status"], r["reason"]) for r in rejected["listed"]} == {
        ("broken", "error", "cannot identify image file"),
        ("hostile", "filtered", "image is 10x10, smaller than 32 px"),
    }
    assert report["figures"] == ["cluster_sizes.png", "duplicate_groups.png", "cluster_members.png"]


def test_html_escapes_names_and_shows_stages_and_pictures(full_out):
    report = write_report(full_out, ReportConfig(examples=4), STAGES)
    page = (full_out / "report" / "report.html").read_text()
    assert "<td>ingest</td>" in page and "<td>dedup</td>" in page and '<td class="n">1.250</td>' in page
    assert "&lt;b&gt;x&amp;y.png" in page and HOSTILE not in page
    assert "cannot identify image file" in page
    assert "<td>report</td>" in page
    for name in report["figures"]:
        assert f'href="{name}"' in page
        assert (full_out / "report" / name).is_file()
    assert not list((full_out / "report").glob(".*tmp"))


def test_pictures_open_and_are_not_blank(full_out):
    report = write_report(full_out, ReportConfig(examples=4), STAGES)
    for name in report["figures"]:
        with Image.open(full_out / "report" / name) as image:
            assert np.asarray(image.convert("L")).std() > 0, name
    with Image.open(full_out / "report" / "duplicate_groups.png") as sheet:
        assert sheet.width > sheet.height  # one row: the kept image then its two copies


def test_cluster_members_follow_the_seed(full_out):
    config = ReportConfig(examples=2, seed=3)
    write_report(full_out, config)
    first = (full_out / "report" / "cluster_members.png").read_bytes()
    write_report(full_out, config)
    assert (full_out / "report" / "cluster_members.png").read_bytes() == first


def test_partial_run_reports_later_stages_absent(tmp_path, lake):
    out = tmp_path / "out"
    _files_and_images(out, lake)
    report = write_report(out, ReportConfig(), STAGES[:1])
    for name in ("embeddings", "duplicates", "clusters", "selection", "shards"):
        assert report[name] == {"present": False}
        assert report["tables"][name] is False
    assert report["sets"]["pool"]["embedded"] is None and report["sets"]["pool"]["error"] == 1
    assert report["figures"] == []
    page = (out / "report" / "report.html").read_text()
    assert "absent" in page and "&lt;b&gt;x&amp;y.png" in page and ".png\"" not in page.split("<h2>Pictures")[1]


def test_rerun_refreshes_the_folder(full_out):
    write_report(full_out, ReportConfig(examples=2), STAGES)
    for name in ("clusters", "duplicates"):
        for part in (full_out / "tables" / name).iterdir():
            part.unlink()
    report = write_report(full_out, ReportConfig(examples=2), STAGES)
    assert report["figures"] == []
    assert not list((full_out / "report").glob("*.png"))
    assert report["clusters"] == {"present": False}


def test_leaked_image_names_the_eval_image_it_copies(full_out, lake):
    uri = {k: u for k, u, *_ in lake}
    rows = read_table(full_out, "duplicates").to_pylist()
    for row in rows:
        if row["key"] == "f":
            row.update(kept=False, reason="leak:bench", kept_key="eval-q", similarity=0.9)
    write_part(full_out, "duplicates", 0, _table("duplicates", rows))
    report = write_report(full_out, ReportConfig(examples=4), STAGES)
    dup = report["duplicates"]
    assert dup["by_reason"] == {"copy": 1, "exact": 1, "leak:bench": 1}
    assert dup["group_sizes"] == {"1": 3, "3": 1}
    assert [g["kept_key"] for g in dup["largest"]] == ["a", "eval-q"]
    assert dup["largest"][1]["uris"] == [uri["f"]]
    with Image.open(full_out / "report" / "duplicate_groups.png") as sheet:
        assert sheet.height == 2 * (128 + 28 + 2 * 4)  # two rows of contact_sheet cells


class _Page(HTMLParser):
    """Every ``<img src>``, ``<a href>`` and the visible text of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.links, self.text = [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "a":
            self.links.append(attrs.get("href", ""))

    def handle_data(self, data):
        self.text.append(data)


def test_the_page_travels_alone_with_its_pictures_links_and_keys(full_out, tmp_path):
    report = write_report(full_out, ReportConfig(examples=4, seed=0), STAGES)
    moved = tmp_path / "elsewhere" / "report.html"
    moved.parent.mkdir()
    shutil.copy(full_out / "report" / "report.html", moved)  # the file alone
    page = _Page(moved.read_text())
    assert page.images and all(src.startswith("data:image/") for src in page.images)
    for src in page.images:
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    shown = [g for g in report["duplicates"]["largest"] if g["shown"]]
    readable = {k for g in shown for k in g["keys"]} | {k for c in report["clusters"]["shown"] for k in c["keys"]}
    pictured = sum(len(g["keys"]) for g in shown) + sum(len(c["keys"]) for c in report["clusters"]["shown"])
    assert len(page.images) >= 1 + pictured  # the histogram, then every image shown
    text = " ".join(page.text)
    for key in readable:  # every key shown is written out in full, beside its picture and in the key list
        assert key in text.split()
    for group in shown:
        assert "keys: " + ", ".join(group["keys"]) in text
    for cluster in report["clusters"]["shown"]:
        assert "keys: " + ", ".join(cluster["keys"]) in text
    assert {"report"} <= {row["stage"] for row in report["stages"]} and "report" in text.split()
    resolved = set()
    for href in page.links:
        target = Path(url2pathname(urlsplit(href).path)) if href.startswith("file://") else full_out / "report" / href
        assert target.resolve().is_file(), href
        resolved.add(target.resolve())
    out = full_out.resolve()
    for needed in ("tables/images/part-00000.parquet", "tables/shards/part-00000.parquet", "shards/index.json",
                   "shards/shard-000000.tar", "report/report.json"):
        assert out / needed in resolved, needed
    assert Path(shown[0]["uris"][0]).resolve() in resolved  # the source file of a shown image


def test_tables_split_over_parts_give_the_same_report_read_a_part_at_a_time(full_out, tmp_path, monkeypatch):
    """The report streams each table part by part (no whole table in memory): split into one part per row
    (groups and clusters spread over parts), every number, listed group and shown member stays the same."""
    split = tmp_path / "split"
    for name in TABLES:
        if (full_out / "tables" / name).is_dir():
            table = read_table(full_out, name)
            for row in range(len(table)):
                write_part(split, name, row, table.slice(row, 1))
    shutil.copytree(full_out / "shards", split / "shards")
    import pyarrow.parquet as pq

    read = pq.read_table

    def columns_only(source, *args, columns=None, **kwargs):
        assert columns is not None, f"every column of {source} was read"
        return read(source, *args, columns=columns, **kwargs)

    monkeypatch.setattr(pq, "read_table", columns_only)
    whole = write_report(full_out, ReportConfig(examples=4, seed=0), STAGES)
    parts = write_report(split, ReportConfig(examples=4, seed=0), STAGES)
    for report in (whole, parts):
        report.pop("outputs")
        report["stages"].pop()  # the report's own seconds
    assert parts == whole
    assert parts["duplicates"]["largest"][0]["keys"] == ["a", "b", "c"]  # one group over three parts
