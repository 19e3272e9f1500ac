"""The shard stage streamed from the selection parts (curate/shard_steps.py): the single-task plan's shards
for one part, every selected image once, shards within their part, byte-identical reruns."""

import hashlib
import json
import shutil
import tarfile

import numpy as np
import pyarrow as pa

from benchmarks._shared.embedding_tables import write_embedding_out
from benchmarks._shared.in_process import run_shape
from dinolab.curate import shard_steps, stages, tables
from dinolab.schemas.config import load_config
from dinolab.schemas.tables import utc_now


def _lake(out, partition, count: int = 60):
    files = out / "files"
    files.mkdir(parents=True)
    uris, formats, sizes = [], [], []
    for i in range(count):
        data = hashlib.sha256(str(i).encode()).digest() * (1 + i % 5)
        path = files / f"img-{i}.{'png' if i % 3 == 0 else 'jpg'}"
        path.write_bytes(data)
        uris.append(str(path))
        formats.append("PNG" if i % 3 == 0 else "JPEG")
        sizes.append(len(data))
    vectors = np.random.default_rng(0).standard_normal((count, 4)).astype(np.float32)
    keys = write_embedding_out(out, vectors, partition, sizes=sizes, uris=uris, formats=formats)
    for part in sorted(set(np.asarray(partition).tolist())):  # select every other image of each partition
        rows = [i for i in range(count) if partition[i] == part and i % 2 == 0]
        tables.write_part(out, "selection", part, pa.table({
            "key": [keys[i] for i in rows], "uri": [uris[i] for i in rows], "method": ["balanced"] * len(rows),
            "query_key": [None] * len(rows), "cluster": [i % 4 for i in rows], "similarity": [None] * len(rows),
            "selected_at": [utc_now()] * len(rows)}))
    return keys


def _run(out, config) -> None:
    run_shape(out, config, shard_steps.STEPS)


def _rows(out) -> list[dict]:
    return tables.read_table(out, "shards").drop_columns(["written_at"]).to_pylist()


def _shards(out) -> dict[str, bytes]:
    folder = out / "shards"
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_one_part_gives_the_single_task_shards_byte_for_byte(tmp_path):
    config = load_config(None, ["shard.max_samples=4"])
    _lake(tmp_path, np.zeros(60, dtype=int))
    count = stages.plan(tmp_path, config)
    stages.finish_shards(tmp_path, [stages.shard(tmp_path, n, config) for n in range(count)])
    single, single_rows = _shards(tmp_path), _rows(tmp_path)
    shutil.rmtree(tmp_path / "shards")
    shutil.rmtree(tmp_path / "tables" / "shards")
    _run(tmp_path, config)
    assert _shards(tmp_path) == single and _rows(tmp_path) == single_rows
    assert not (tmp_path / "work" / "shard").exists()


def test_parts_are_planned_apart_and_reruns_are_byte_identical(tmp_path):
    config = load_config(None, ["shard.max_samples=3"])
    partition = np.arange(60) % 4
    keys = _lake(tmp_path, partition)
    _run(tmp_path, config)
    first = _shards(tmp_path)
    rows = tables.read_table(tmp_path, "shards").to_pylist()
    assert sorted(row["key"] for row in rows) == sorted(keys[i] for i in range(60) if i % 2 == 0)
    assert tables.done_parts(tmp_path, "shards") == {0, 1, 2, 3}
    by_shard = {}
    for row in rows:
        by_shard.setdefault(row["shard"], []).append(row)
    for shard_rows in by_shard.values():
        assert len(shard_rows) <= 3
        assert len({partition[int(r["key"][4:])] for r in shard_rows}) == 1  # one part per shard
        assert len({r["member"].rsplit(".", 1)[1] for r in shard_rows}) == 1  # one format per shard
    for row in rows:  # original bytes
        with tarfile.open(tmp_path / "shards" / row["shard"]) as tar:
            image = tar.extractfile(row["member"]).read()
        assert image == (tmp_path / "files" / f"img-{int(row['key'][4:])}.{row['member'].rsplit('.', 1)[1]}").read_bytes()
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert [s["url"] for s in index["shardlist"]] == sorted(by_shard)
    assert sum(s["nsamples"] for s in index["shardlist"]) == len(rows)
    shutil.rmtree(tmp_path / "shards")
    shutil.rmtree(tmp_path / "tables" / "shards")
    _run(tmp_path, config)
    assert _shards(tmp_path) == first


def test_a_shard_written_before_an_interruption_is_kept(tmp_path):
    config = load_config(None, ["shard.max_samples=5"])
    _lake(tmp_path, np.arange(60) % 2)
    numbered = run_shape(tmp_path, config, shard_steps.STEPS[:2])
    shard_steps.write(tmp_path, config, 1)
    written = (tmp_path / "shards" / "shard-000001.tar").stat().st_mtime_ns
    run_shape(tmp_path, config, shard_steps.STEPS[2:], numbered)
    assert (tmp_path / "shards" / "shard-000001.tar").stat().st_mtime_ns == written
    assert len(tables.read_table(tmp_path, "shards")) == 30
