"""A lake of web URLs is downloaded once per run: ingest keeps the bytes, every later stage reads them back."""

from __future__ import annotations

import functools
import io
import tarfile
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dinolab.curate import fetched, stages, tables
from lakes import write_lake
from dinolab.pipelines.cli import app


@pytest.fixture
def counting_server(tmp_path):
    """``tmp_path/site`` over HTTP on 127.0.0.1, counting requests (any method) per path."""
    site = tmp_path / "site"
    site.mkdir()
    requests: Counter[str] = Counter()
    lock = threading.Lock()

    class Counting(SimpleHTTPRequestHandler):
        def send_head(self):
            with lock:
                requests[self.path] += 1
            return super().send_head()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Counting, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield site, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    thread.join(timeout=10)


def test_a_url_column_is_fetched_once_per_image_in_a_whole_run(counting_server, tmp_path):
    site, base, requests = counting_server
    folders = write_lake(tmp_path / "lake", pool=40, curated=6, evals=2)
    names = sorted(path.name for path in folders["pool"].iterdir())
    for name in names:
        (site / name).write_bytes((folders["pool"] / name).read_bytes())
    pq.write_table(pa.table({"url": [f"{base}/{name}" for name in names]}), tmp_path / "urls.parquet")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "run", "--lake", str(tmp_path / "urls.parquet"), "--curated", str(folders["curated"]),
        "--eval", str(folders["eval"]), "--out", str(out), "--workers", "1", "--config", "demo",
        "ingest.path_column=url", "ingest.fetch_urls=true", "ingest.partition_size=16", "shard.max_samples=10",
        "report.examples=4",
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.stdout + result.stderr

    assert requests == Counter({f"/{name}": 1 for name in names})  # every image once, nothing else
    selection = tables.read_table(out, "selection").column("uri").to_pylist()
    assert selection and all(uri.startswith(base) for uri in selection)
    in_shards = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if not member.name.endswith(".json"):
                    in_shards[member.name] = tar.extractfile(member).read()
    by_uri = {row["uri"]: row for row in tables.read_table(out, "images").to_pylist()}
    shard_rows = tables.read_table(out, "shards").to_pylist()
    keys = {row["key"]: row["uri"] for row in by_uri.values()}
    assert len(in_shards) == len(selection) == len(shard_rows)
    for row in shard_rows:  # the original bytes, as the server holds them
        assert in_shards[row["member"]] == (site / keys[row["key"]].rsplit("/", 1)[1]).read_bytes()


def test_kept_bytes_are_read_back_and_other_uris_come_from_the_lake(tmp_path):
    local = tmp_path / "a.bin"
    local.write_bytes(b"local bytes")
    remote = {f"https://example.invalid/{i}.jpg": bytes([i]) * (i + 1) for i in range(40)}
    assert fetched.keep(tmp_path, 0, {str(local): b"ignored"}) is None  # only web URLs are kept
    fetched.keep(tmp_path, 2, remote)
    wanted = [f"https://example.invalid/{i}.jpg" for i in (3, 37)] + [str(local)]
    assert dict(fetched.read(tmp_path, wanted, partitions=[2])) == {
        wanted[0]: remote[wanted[0]], wanted[1]: remote[wanted[1]], str(local): b"local bytes"}
    missing = dict(fetched.read(tmp_path, ["https://example.invalid/none.jpg"], partitions=[2]))
    assert isinstance(missing["https://example.invalid/none.jpg"], BaseException)  # not kept: the lake is asked
    part = pq.ParquetFile(io.BytesIO(fetched.part_path(tmp_path, 2).read_bytes()))
    assert part.num_row_groups == 3 and part.schema_arrow.names == ["uri", "data"]
    assert "fetched/part-*.parquet" in stages.output_patterns("ingest")  # redone ingest drops what it kept
