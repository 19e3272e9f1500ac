"""Lakes in a real S3 endpoint (moto's server on 127.0.0.1, dummy keys): ``curate run`` on LocalCluster workers
that reach the bucket through storage options given as task arguments, and secrets that never reach a file."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from pretrain_tiny import TINY_OVERRIDES
from shard_sets import fashion_mnist_pngs, write_shards
from typer.testing import CliRunner

from dinolab.curate import output, stages, tables
from dinolab.curate.lakes import parse
from lakes import write_lake
from dinolab.pipelines.cli import app
from dinolab.pretrain.cli import main as pretrain_main
from dinolab.pretrain.data.shards import ShardReader, resolve_shards


runner = CliRunner()
DEMO = ["--config", "demo", "ingest.partition_size=40", "shard.max_samples=30"]
BUCKET = "dinolab-lake"
SECRET = "dummy-secret-never-written-9f8e7d"
ACCESS_KEY = "AKIADUMMYNEVERWRITTEN"


def curate(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server in a process of its own (its request handling does not share this process's interpreter
    lock with the client and the local scheduler); yields its endpoint URL."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"moto server exited with {server.returncode}") from None
                time.sleep(0.1)
        else:
            raise RuntimeError(f"moto server on {endpoint} did not answer (300 tries, 0.1 s apart)")
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server with the test lake in a bucket; yields (endpoint URL, filesystem, local copy)."""
    patch = pytest.MonkeyPatch()
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        patch.setenv(name, value)  # the usual environment: LocalCluster workers inherit it
    patch.delenv("AWS_PROFILE", raising=False)
    with moto_server() as endpoint:
        yield from _lake_in_bucket(endpoint, tmp_path_factory)
    patch.undo()


def _lake_in_bucket(endpoint: str, tmp_path_factory) -> Iterator[tuple]:
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
    fs.mkdir(BUCKET)
    root = tmp_path_factory.mktemp("s3lake")
    folders = write_lake(root)
    for role, folder in folders.items():
        for path in sorted(folder.iterdir()):
            sub = "" if path.name.startswith(("astronaut", "chelsea", "coffee", "rocket")) else (
                "fm/" if path.name.startswith("fm_") else "other/")
            fs.pipe(f"{BUCKET}/{role}/{sub if role == 'pool' else ''}{path.name}", path.read_bytes())
    yield endpoint, fs, folders


def every_byte_under(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in folder.rglob("*") if path.is_file())


def test_curate_run_on_a_bucket_writes_tables_and_shards_and_no_secret(s3, tmp_path):
    endpoint, fs, folders = s3
    out = tmp_path / "out"
    result = curate("run", "--lake", f"s3://{BUCKET}/pool/", "--curated", f"s3://{BUCKET}/curated/",
                    "--eval", f"s3://{BUCKET}/eval/", "--out", out, "--workers", 2,
                    "--storage-option", f"endpoint_url={endpoint}", "--storage-option", f"key={ACCESS_KEY}",
                    "--storage-option", f"secret={SECRET}", *DEMO)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "list split (3 units)" in result.stdout  # listed by tasks, not in one unit
    files = tables.read_table(out, "files").to_pylist()
    local = {path.name: path for folder in folders.values() for path in folder.iterdir()}
    assert len(files) == len(local)
    assert all(row["uri"].startswith(f"s3://{BUCKET}/") for row in files)
    pool = [row for row in files if row["role"] == "pool"]
    by_unit: dict[str, set[int]] = {}
    for row in pool:  # one unit per sub-prefix (fm/, other/) and one for the top level: no partition spans two
        unit = row["uri"].split("/pool/")[1].split("/")[0] if row["uri"].count("/") > 4 else "top"
        by_unit.setdefault(unit, set()).add(row["partition"])
    assert sorted(by_unit) == ["fm", "other", "top"]
    assert all(not (a & b) for a in by_unit.values() for b in by_unit.values() if a is not b)

    images = {Path(row["uri"]).name: row for row in tables.read_table(out, "images").to_pylist()}
    assert images["broken.jpg"]["status"] == "error" and images["empty.png"]["error"] == "empty file"
    assert images["astronaut.jpg"]["status"] == "ok" and images["astronaut.jpg"]["width"] == 512
    duplicates = {Path(row["uri"]).name: row for row in tables.read_table(out, "duplicates").to_pylist()}
    assert {duplicates["fm_0001.png"]["group"]} == {duplicates["mirror_of_fm_0001.png"]["group"]}
    assert all(not row["kept"] for name, row in duplicates.items() if name.startswith("web_"))

    import webdataset as wds

    index = json.loads((out / "shards" / "index.json").read_text())
    urls = [str(out / "shards" / shard["url"]) for shard in index["shardlist"]]
    selection = {row["key"]: row for row in tables.read_table(out, "selection").to_pylist()}
    seen = 0
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        uri = selection[sample["__key__"]]["uri"]
        ext = next(k for k in sample if k not in ("__key__", "__url__", "__local_path__", "json"))
        assert sample[ext] == fs.cat(uri) == local[Path(uri).name].read_bytes()
        seen += 1
    assert seen == len(selection) > 0

    from dinolab.curate.report import _open

    shown = _open(next(iter(selection.values()))["uri"], 64, {"endpoint_url": endpoint})  # contact sheets reach S3
    assert shown is not None and max(shown.size) <= 64

    run = json.loads((out / "run.json").read_text())
    assert run["config"]["lake"]["storage_options"] == {"endpoint_url": endpoint, "key": "<redacted>",
                                                        "secret": "<redacted>"}
    written = every_byte_under(out)
    assert SECRET.encode() not in written and ACCESS_KEY.encode() not in written
    assert SECRET not in result.stdout + result.stderr and ACCESS_KEY not in result.stdout + result.stderr

    rerun = curate("run", "--out", out, "--workers", 1, "--storage-option", f"endpoint_url={endpoint}", *DEMO)
    assert rerun.exit_code == 0, rerun.stderr  # resumes with the credentials of the environment
    assert rerun.stdout.count("done already") == len(stages.ORDER) - 1


def test_a_webdataset_shard_lake_and_a_parquet_lake_in_the_bucket(s3, tmp_path):
    endpoint, fs, folders = s3
    pool = sorted(folders["pool"].glob("fm_*.png"))[:30]
    for shard in range(2):
        path = tmp_path / f"{shard:06d}.tar"
        with tarfile.open(path, "w") as archive:
            for image in pool[shard * 15 : (shard + 1) * 15]:
                archive.add(image, arcname=f"{image.stem}.png")
                meta = tmp_path / "meta.json"
                meta.write_text("{}")
                archive.add(meta, arcname=f"{image.stem}.json")
            link = tarfile.TarInfo("escape.png")
            link.type, link.linkname = tarfile.SYMTYPE, "../../etc/passwd"
            archive.addfile(link)
        fs.put_file(str(path), f"{BUCKET}/shards/{path.name}")
    out = tmp_path / "tar-out"
    result = curate("ingest", "--lake", f"s3://{BUCKET}/shards/*.tar", "--out", out, "--workers", 1,
                    "--storage-option", f"endpoint_url={endpoint}", *DEMO)
    assert result.exit_code == 0, result.stdout + result.stderr
    images = tables.read_table(out, "images").to_pylist()
    assert len(images) == 32 and {parse(row["uri"]).location for row in images} == {
        f"s3://{BUCKET}/shards/000000.tar", f"s3://{BUCKET}/shards/000001.tar"}
    refused = [row for row in images if parse(row["uri"]).member == "escape.png"]
    assert len(refused) == 2 and all(r["error"].startswith("refused tar member: symbolic link") for r in refused)
    ok = {parse(row["uri"]).member: row for row in images if row["status"] == "ok"}
    assert len(ok) == 30 and ok[pool[0].stem + ".png"]["bytes"] == pool[0].stat().st_size

    blobs = [path.read_bytes() for path in pool[:10]]
    pq.write_table(pa.table({"image": [{"bytes": b, "path": p.name} for b, p in zip(blobs, pool)]}),
                   tmp_path / "export.parquet", row_group_size=4)
    fs.put_file(str(tmp_path / "export.parquet"), f"{BUCKET}/export/train.parquet")
    out = tmp_path / "parquet-out"
    result = curate("ingest", "--lake", f"s3://{BUCKET}/export/train.parquet", "--out", out, "--workers", 1,
                    "--storage-option", f"endpoint_url={endpoint}", *DEMO)
    assert result.exit_code == 0, result.stdout + result.stderr
    images = tables.read_table(out, "images").to_pylist()
    assert [row["status"] for row in images] == ["ok"] * 10
    assert [row["bytes"] for row in images] == [len(b) for b in blobs]
    assert images[3]["uri"] == f"parquet://image.bytes/3::s3://{BUCKET}/export/train.parquet"


def test_a_parquet_table_in_the_bucket_never_reads_local_files(s3, tmp_path):
    endpoint, fs, folders = s3
    local_image = sorted(folders["pool"].glob("fm_*.png"))[0]
    fs.put_file(str(local_image), f"{BUCKET}/index/img/a.png")
    paths = ["img/a.png", str(local_image), "/etc/shadow", "../pool/fm/" + local_image.name, f"file://{local_image}"]
    pq.write_table(pa.table({"file": paths}), tmp_path / "index.parquet")
    fs.put_file(str(tmp_path / "index.parquet"), f"{BUCKET}/index/index.parquet")
    out = tmp_path / "out"
    result = curate("ingest", "--lake", f"s3://{BUCKET}/index/index.parquet", "--out", out, "--workers", 1,
                    "--storage-option", f"endpoint_url={endpoint}", "ingest.path_column=file", *DEMO)
    assert result.exit_code == 0, result.stdout + result.stderr
    images = {parse(row["uri"]).location: row for row in tables.read_table(out, "images").to_pylist()}
    assert images[f"s3://{BUCKET}/index/img/a.png"]["status"] == "ok"
    for path in (str(local_image), "/etc/shadow", f"file://{local_image}"):
        assert images[path]["status"] == "error" and images[path]["sha256"] is None
        assert images[path]["error"] == ("skipped: a local path named by a remote table "
                                         "(ingest.allow_outside_paths=true reads it)")
    climbing = images["../pool/fm/" + local_image.name]
    assert climbing["sha256"] is None and "outside the table's folder" in climbing["error"]
    assert len(images) == 5


def test_a_missing_prefix_is_one_line_and_exit_code_2(s3, tmp_path):
    endpoint, _, _ = s3
    result = curate("run", "--lake", f"s3://{BUCKET}/nothing-here/", "--out", tmp_path / "out", "--workers", 1,
                    "--storage-option", f"endpoint_url={endpoint}", *DEMO)
    assert result.exit_code == 2
    assert "no such folder or prefix" in result.stderr and result.stderr.count("\n") == 1, result.stderr


OUT_BUCKET = "dinolab-out"


def out_bucket(fs) -> str:
    if not fs.exists(OUT_BUCKET):
        fs.mkdir(OUT_BUCKET)
    return OUT_BUCKET


def every_object_under(fs, prefix: str) -> dict[str, bytes]:
    return {path: fs.cat(path) for path in fs.find(prefix)}


@pytest.mark.slow
def test_curate_run_into_a_bucket_resumes_and_pretrains_from_it(s3, tmp_path):
    endpoint, fs, _ = s3
    out_bucket(fs)
    out = f"s3://{OUT_BUCKET}/runs/one"
    secrets = ["--storage-option", f"key={ACCESS_KEY}", "--storage-option", f"secret={SECRET}"]
    endpoint_option = ["--storage-option", f"endpoint_url={endpoint}"]
    result = curate("run", "--lake", f"s3://{BUCKET}/pool/", "--curated", f"s3://{BUCKET}/curated/",
                    "--eval", f"s3://{BUCKET}/eval/", "--out", out, "--workers", 2, *endpoint_option, *secrets, *DEMO)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert f"report: {out}/report/report.html" in result.stdout
    fs.invalidate_cache()
    objects = every_object_under(fs, f"{OUT_BUCKET}/runs/one")
    names = {path.split("/runs/one/", 1)[1] for path in objects}
    assert {"run.json", "timings.json", "shards/index.json", "report/report.json", "report/report.html",
            "tables/shards/part-00000.parquet", "embeddings/img_emb/img_emb_00000.npy"} <= names
    assert not [name for name in names if any(part.startswith(".") for part in name.split("/"))]  # no plan, no staging
    written = b"".join(objects.values())
    assert SECRET.encode() not in written and ACCESS_KEY.encode() not in written

    import webdataset as wds

    index = json.loads(objects[f"{OUT_BUCKET}/runs/one/shards/index.json"])
    local = []
    for shard in index["shardlist"]:  # downloaded, then read as any webdataset shard
        data = objects[f"{OUT_BUCKET}/runs/one/shards/{shard['url']}"]
        assert len(data) == shard["filesize"]
        (tmp_path / shard["url"]).write_bytes(data)
        local.append(str(tmp_path / shard["url"]))
    store = output.location(out, {"endpoint_url": endpoint})
    selection = {row["key"]: row for row in tables.read_table(store, "selection").to_pylist()}
    seen = 0
    for sample in wds.WebDataset(local, shardshuffle=False, empty_check=False):
        ext = next(k for k in sample if k not in ("__key__", "__url__", "__local_path__", "json"))
        assert sample[ext] == fs.cat(selection[sample["__key__"]]["uri"])  # the source object's bytes
        seen += 1
    assert seen == len(selection) > 0

    status = curate("status", out, *endpoint_option)
    assert status.exit_code == 0, status.stdout + status.stderr
    assert status.stdout.count(" done ") == len(stages.ORDER) and f"s3://{BUCKET}/pool/" in status.stdout

    args = ["run", "--out", out, "--workers", 1, *endpoint_option, *secrets, *DEMO, "--pretrain", "fmnist-tiny",
            "--pretrain-out", tmp_path / "train"]
    for override in [*TINY_OVERRIDES, "optim.batch_size=8"]:
        args += ["--pretrain-arg", override]
    rerun = curate(*args)
    assert rerun.exit_code == 0, rerun.stdout + rerun.stderr
    assert rerun.stdout.count("done already") == len(stages.ORDER) - 1  # every stage but the report (always rewritten) skipped
    samples = sum(shard["nsamples"] for shard in index["shardlist"])
    assert f"--data {out}/shards" in rerun.stdout and f"endpoint_url={endpoint}" in rerun.stdout
    assert f"{samples} samples in {len(index['shardlist'])} shard" in rerun.stdout and "trained " in rerun.stdout
    assert "skipped" not in rerun.stdout.split("pretrain stage:")[1]
    assert SECRET not in rerun.stdout + rerun.stderr and ACCESS_KEY not in rerun.stdout + rerun.stderr
    assert (tmp_path / "train" / "teacher_backbone.safetensors").is_file()
    fs.invalidate_cache()
    assert SECRET.encode() not in b"".join(every_object_under(fs, f"{OUT_BUCKET}/runs/one").values())


def test_pretrain_train_reads_shards_in_a_bucket(s3, tmp_path, capsys):
    endpoint, fs, _ = s3
    out_bucket(fs)
    pngs = fashion_mnist_pngs(40)
    write_shards(tmp_path / "shards", pngs, [24, 16])
    for path in sorted((tmp_path / "shards").iterdir()):
        fs.put_file(str(path), f"{OUT_BUCKET}/loose/shards/{path.name}")
    fs.invalidate_cache()
    specs = [f"s3://{OUT_BUCKET}/loose/shards", f"s3://{OUT_BUCKET}/loose/shards/index.json",
             f"s3://{OUT_BUCKET}/loose/shards/shard-{{000000..000001}}.tar"]
    local = resolve_shards(str(tmp_path / "shards"))
    for spec in specs:
        shards = resolve_shards(spec, {"endpoint_url": endpoint})
        assert shards.counts == local.counts == [24, 16]
        reader = ShardReader(shards, storage_options={"endpoint_url": endpoint})
        assert [reader.read(i) for i in (0, 30, 1)] == [ShardReader(local).read(i) for i in (0, 30, 1)]
    code = pretrain_main(["train", "--data", specs[0], "--storage-option", f"endpoint_url={endpoint}",
                          "--out", str(tmp_path / "run"), "--no-eval", "--no-progress", *TINY_OVERRIDES,
                          "optim.batch_size=8", "run.num_workers=1"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "40 samples in 2 shards" in printed.out and "trained 5 steps" in printed.out
    assert "skipped" not in printed.out


def test_one_run_holds_an_out_in_a_bucket_and_a_dead_holders_lock_is_taken_over(s3):
    """docs/curation.md, "What the output folder guarantees": the lock on an object store (conditional put, heartbeat, lease)."""
    import time

    from dinolab.pipelines.lock import LOCK_FILE, LockError, OutputLock

    endpoint, fs, _ = s3
    out = output.location(f"s3://{BUCKET}/locked-run", {"endpoint_url": endpoint})
    with OutputLock(out, "curate run first", lease=1.0, heartbeat=0.2):
        time.sleep(1.5)  # longer than the lease: the heartbeat keeps it
        with pytest.raises(LockError, match=r"in use by another run \(host .*command: curate run first\)"):
            OutputLock(out, "curate run second", lease=1.0).__enter__()
    assert not fs.exists(f"{BUCKET}/locked-run/{LOCK_FILE}")  # released
    dead = OutputLock(out, "curate run killed", lease=1.0, heartbeat=3600.0).__enter__()  # never beats again
    with pytest.raises(LockError, match="killed"):
        OutputLock(out, "curate run early", lease=1.0).__enter__()
    time.sleep(1.5)
    with OutputLock(out, "curate run later", lease=1.0):
        assert json.loads(fs.cat(f"{BUCKET}/locked-run/{LOCK_FILE}"))["command"] == "curate run later"
    dead._stop.set()  # (the dead run's heartbeat thread, idle all along, ends)


def test_damage_in_a_bucket_is_listed_by_status_verify_and_repaired_by_a_rerun(s3):
    """docs/curation.md, "What the output folder guarantees": damage found and repaired on an object store too."""
    endpoint, fs, folders = s3
    out = f"s3://{out_bucket(fs)}/runs/damaged"
    options = ["--storage-option", f"endpoint_url={endpoint}"]
    command = ["run", "--lake", folders["pool"], "--out", out, "--workers", 1, *options, *DEMO]
    assert curate(*command).exit_code == 0
    fs.rm(f"{OUT_BUCKET}/runs/damaged/shards/shard-000001.tar")
    fs.rm(f"{OUT_BUCKET}/runs/damaged/embeddings/img_emb/img_emb_00001.npy")
    status = curate("status", out, "--verify", *options)
    assert status.exit_code == 1
    assert "damaged: embed part-00001: embeddings/img_emb/img_emb_00001.npy: missing" in status.stdout
    assert "damaged: shard shard-000001: shards/shard-000001.tar: missing" in status.stdout
    rerun = curate(*command)
    assert rerun.exit_code == 0, rerun.stdout + rerun.stderr
    assert "ingest: done already" in rerun.stdout and "embed (1 partitions)" in rerun.stdout
    assert curate("status", out, "--verify", *options).exit_code == 0
