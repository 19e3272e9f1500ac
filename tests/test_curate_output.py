"""The output helper behaves alike on a local folder and an fsspec store (``memory://``), and tables and
shards written through it read back the same."""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pytest

from dinolab.curate import output, tables
from dinolab.curate.output import RemotePath
from dinolab.curate.shards import ShardSample, write_shard


@pytest.fixture(params=["local", "memory"])
def out(request, tmp_path):
    if request.param == "local":
        yield tmp_path / "out"
        return
    url = f"memory://output-test-{uuid.uuid4().hex[:8]}/run"
    yield output.location(url, {})
    output.remove_tree(output.location(url))


def test_location_keeps_urls_and_hides_options():
    remote = output.location("s3://bucket/run/", {"secret": "s3cr3t"})
    assert isinstance(remote, RemotePath) and str(remote) == "s3://bucket/run"
    assert str(output.join(remote, "tables", "files")) == "s3://bucket/run/tables/files"
    assert (remote / "x").storage_options == {"secret": "s3cr3t"} and (remote / "a.tar").name == "a.tar"
    assert "s3cr3t" not in repr(remote / "x") and "s3cr3t" not in str(remote)
    assert pickle.loads(pickle.dumps(remote)).storage_options == {"secret": "s3cr3t"}  # travels to workers
    assert output.location("file:///tmp/run") == Path("/tmp/run") and output.location("runs/a") == Path("runs/a")


def test_write_read_list_and_remove(out):
    folder = output.join(out, "tables", "t")
    assert not output.exists(folder) and output.names(folder) == [] and output.size(folder / "a") is None
    output.write_bytes(folder / "part-00001.parquet", b"one")
    output.write_bytes(folder / "part-00000.parquet", b"zero")
    output.write_bytes(folder / "other.txt", b"x")
    assert output.names(folder, "part-*.parquet") == ["part-00000.parquet", "part-00001.parquet"]
    assert output.read_bytes(folder / "part-00000.parquet") == b"zero" and output.size(folder / "other.txt") == 1
    assert output.is_file(folder / "other.txt") and not output.is_file(folder) and output.exists(folder)
    readable = output.readable(folder / "other.txt")
    assert (readable.read() if isinstance(out, RemotePath) else readable.read_bytes()) == b"x"

    def half_then_fail(stream):
        stream.write(b"half")
        raise RuntimeError("write failed")

    with pytest.raises(RuntimeError):
        output.publish(folder / "broken", half_then_fail)
    assert not output.exists(folder / "broken")  # a failed write publishes nothing
    if not isinstance(out, RemotePath):
        assert sorted(p.name for p in Path(folder).iterdir()) == ["other.txt", "part-00000.parquet", "part-00001.parquet"]
    output.remove(folder / "other.txt")
    output.remove(folder / "other.txt")  # already gone: nothing to do
    assert output.names(folder) == ["part-00000.parquet", "part-00001.parquet"]
    output.remove_tree(output.join(out, "tables"))
    assert not output.exists(folder) and output.names(folder) == []


def test_tables_and_shards_through_the_helper(out):
    table = pa.table({"key": ["a", "b"], "uri": ["/x/a.png", "/x/b.png"], "role": ["pool", "pool"],
                      "set": ["pool", "pool"], "partition": pa.array([0, 0], pa.int32())})
    tables.write_part(out, "files", 0, table)
    tables.write_array(out, "embeddings", 0, np.eye(3, dtype=np.float32), pa.table({"key": ["a", "b", "c"]}))
    assert tables.done_parts(out, "files") == {0}
    assert tables.read_table(out, "files").equals(tables.read_part(out, "files", 0))
    assert np.array_equal(tables.read_array(out, "embeddings", 0), np.eye(3))
    info = write_shard(output.join(out, "shards", "shard-000000.tar"), [ShardSample("a", b"\x89PNG", "png", {})])
    data = output.read_bytes(output.join(out, "shards", "shard-000000.tar"))
    assert info.filesize == len(data) and info.name == "shard-000000.tar"


def test_memory_objects_appear_whole():
    url = f"memory://output-whole-{uuid.uuid4().hex[:8]}"
    path = output.location(url) / "big.bin"
    seen = []

    def write(stream):
        stream.write(b"a" * 1000)
        seen.append(fsspec.filesystem("memory").exists(path.filesystem()[1]))

    output.publish(path, write)
    assert seen == [False] and output.size(path) == 1000  # nothing visible until the one put
    output.remove_tree(output.location(url))


def test_a_run_record_in_a_store_resumes_and_a_changed_config_redoes_its_stages():
    from dinolab.curate.lakes.sets import ImageSet
    from dinolab.pipelines.named_configs import CONFIG_DIR
    from dinolab.pipelines.state import RunError, check, prepare, read_run
    from dinolab.schemas.config import load_config

    out = output.location(f"memory://output-run-{uuid.uuid4().hex[:8]}/run")
    sets = [ImageSet("s3://bucket/lake", "pool", "pool")]
    config = load_config(CONFIG_DIR / "demo.yaml")
    assert prepare(out, sets, config) == []
    tables.write_array(out, "embeddings", 0, np.zeros((1, 2), np.float32), pa.table({"key": ["a"]}))
    output.write_bytes(output.join(out, "tables", "clusters", "part-00000.parquet"), b"stale")
    assert read_run(out)["sets"] == [{"uri": "s3://bucket/lake", "role": "pool", "name": "pool"}]
    assert prepare(out, sets, config) == []  # the same run: resumed, nothing removed
    changed = load_config(CONFIG_DIR / "demo.yaml", ["cluster.ks=[3, 2]"])
    assert prepare(out, sets, changed)[0] == "cluster"
    assert output.names(output.join(out, "tables", "clusters")) == []
    assert output.names(output.join(out, "embeddings", "img_emb")) == ["img_emb_00000.npy"]
    with pytest.raises(RunError, match="holds another run"):
        check(out, [ImageSet("s3://bucket/other", "pool", "pool")])
    output.remove_tree(out)


def test_removing_a_stages_outputs_keeps_every_other_file(out):
    from dinolab.curate.stages import remove_outputs

    for name in ("shards/shard-000000.tar", "shards/index.json", "shards/holiday.jpg", "report/notes.txt",
                 "tables/shards/part-00000.parquet", "shards/.shard-000001.tar.123.abcd.tmp"):
        output.write_bytes(output.join(out, *name.split("/")), b"x")
    remove_outputs(out, "shard")
    assert output.names(output.join(out, "shards")) == ["holiday.jpg"]
    assert not output.names(output.join(out, "tables", "shards"))
    assert output.names(output.join(out, "report")) == ["notes.txt"]


def test_a_unit_record_finds_missing_truncated_and_overwritten_files(out):
    from dinolab.curate import manifest

    paths = [output.join(out, "shards", f"shard-00000{i}.tar") for i in range(3)]
    for path in paths:
        output.write_bytes(path, b"0123456789")
        manifest.record(out, "shard", path.name.removesuffix(".tar"), [path])
    assert manifest.damaged(out, "shard", deep=True) == {}
    output.remove(paths[0])
    output.write_bytes(paths[1], b"012345")
    output.write_bytes(paths[2], b"9876543210")
    assert manifest.damaged(out, "shard") == {"shard-000000": {"shards/shard-000000.tar": "missing"},
                                              "shard-000001": {"shards/shard-000001.tar": "6 bytes, 10 written"}}
    assert manifest.damaged(out, "shard", deep=True)["shard-000002"] == {
        "shards/shard-000002.tar": "overwritten (another MD5 digest)"}
