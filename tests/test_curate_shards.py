"""Shard stage: webdataset/wids round trips of real image files, byte-identical reruns, planning, atomicity."""

import hashlib
import json
import shutil
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import skimage.data
import wids
import webdataset as wds
from PIL import Image
from wids.wids import IndexedTarSamples

from dinolab.curate.shards import (
    META_FIELDS,
    SHARD_MTIME,
    ShardSample,
    image_extension,
    plan_shards,
    sample_meta,
    shard_index,
    shard_name,
    shard_rows,
    write_index,
    write_shard,
)
from dinolab.schemas.tables import SHARDS, validate

# (key, file name, Pillow format, image): several formats, an upper-case suffix and a file without suffix.
_PHOTOS = [
    ("astronaut", "astronaut.png", "PNG", lambda: skimage.data.astronaut()[::4, ::4]),
    ("camera-01", "camera.JPG", "JPEG", lambda: skimage.data.camera()[::4, ::4]),
    ("chelsea_cat", "chelsea.gif", "GIF", lambda: skimage.data.chelsea()[::3, ::3]),
    ("coffee", "coffee.jpeg", "JPEG", lambda: skimage.data.coffee()[::4, ::4]),
    ("noise", "noise", "PNG", lambda: np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)),
    ("rocket", "rocket.webp", "WEBP", lambda: skimage.data.rocket()[::4, ::4]),
    ("Zeta", "zeta.tif", "TIFF", lambda: np.tile(np.arange(64, dtype=np.uint8), (16, 1))),
]


@pytest.fixture
def samples(tmp_path: Path) -> list[ShardSample]:
    """One ShardSample per photo file written under tmp_path/src, sorted by key."""
    src = tmp_path / "src"
    src.mkdir()
    result = []
    for number, (key, file_name, fmt, make) in enumerate(_PHOTOS):
        path = src / file_name
        Image.fromarray(make()).save(path, format=fmt)
        meta = {"key": key, "uri": str(path), "method": "nearest", "query_key": f"q{number}",
                "cluster": number if number % 2 else None, "similarity": 0.5 + number / 100, "note": "café"}
        result.append(ShardSample(key=key, data=path.read_bytes(), ext=image_extension(str(path), fmt), meta=meta))
    return sorted(result, key=lambda sample: sample.key)


def _write_all(out: Path, samples: list[ShardSample], max_samples: int = 3, max_bytes: int = 1 << 20):
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_shards([s.key for s in samples], [len(s.data) for s in samples], max_samples, max_bytes)
    infos = [write_shard(out / shard_name(i), [samples[row] for row in rows]) for i, rows in enumerate(plan)]
    write_index(out / "index.json", shard_index(infos, name="test-set"))
    return plan, infos


def test_image_extension():
    # One extension per format, whatever the file is called (a .jpeg, a .JPG and a JPEG named .png alike).
    assert image_extension("/a/b/IMG_1.JPG", "JPEG") == "jpg"
    assert image_extension("/a/b/x.jpeg", "JPEG") == "jpg"
    assert image_extension("/a/b/really_a_jpeg.png", "JPEG") == "jpg"
    assert image_extension("s3://bucket/dir/x.PNG?version=3", "PNG") == "png"
    assert image_extension("/a/x.webp", "WEBP") == "webp"
    assert image_extension("/a/x.tif", "TIFF") == "tiff"
    assert image_extension("/a/no_suffix", "PNG") == "png"
    assert image_extension("/a/multi.bin", "MPO") == "jpg"
    # A tar member is named by the member, not by its container (it used to give 'jpeg' from the format).
    assert image_extension("tar://IMG_0001-0ad2bd17b2bc.jpg::file:///l/shard-000000.tar", None) == "jpg"
    # Unknown format: the suffix, one spelling per format.
    assert image_extension("/a/x.gif", None) == "gif"
    assert image_extension("/a/x.JPEG", None) == "jpg"
    assert image_extension("/a/x.tif", None) == "tiff"
    with pytest.raises(ValueError):
        image_extension("/a/no_suffix", None)
    with pytest.raises(ValueError):
        image_extension("/a/meta.json", "json")


def test_plan_shards_limits_and_determinism():
    keys = [f"k{i:02d}" for i in range(10)]
    sizes = [10, 20, 30, 5, 200, 1, 1, 1, 1, 40]
    plan = plan_shards(keys, sizes, max_samples=3, max_bytes=50)
    # 10+20 (30 would overflow 50) | 30+5 | 200 alone (oversize) | 1,1,1 (max_samples) | 1+40
    assert plan == [[0, 1], [2, 3], [4], [5, 6, 7], [8, 9]]
    assert plan == plan_shards(list(keys), list(sizes), max_samples=3, max_bytes=50)
    assert sorted(row for shard in plan for row in shard) == list(range(10))
    for shard in plan:
        assert len(shard) <= 3
        assert sum(sizes[row] for row in shard) <= 50 or len(shard) == 1
    assert plan_shards(keys, sizes, max_samples=4, max_bytes=10_000) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    # A sample exactly at the limit fits; an oversize first sample still gets its own shard.
    assert plan_shards(["a", "b", "c"], [20, 30, 1], max_samples=10, max_bytes=50) == [[0, 1], [2]]
    assert plan_shards(["a", "b", "c"], [50, 51, 0], max_samples=10, max_bytes=50) == [[0], [1], [2]]
    assert plan_shards([], [], max_samples=3, max_bytes=50) == []


def test_plan_shards_rejects_bad_input():
    with pytest.raises(ValueError, match="duplicate"):
        plan_shards(["a", "b", "a"], [1, 1, 1], 10, 100)
    with pytest.raises(ValueError, match="invalid sample key"):
        plan_shards(["a.b"], [1], 10, 100)
    with pytest.raises(ValueError):
        plan_shards(["a"], [1, 2], 10, 100)
    with pytest.raises(ValueError):
        plan_shards(["a"], [1], 0, 100)


def test_sample_validation():
    with pytest.raises(ValueError):
        ShardSample(key="a.b", data=b"x", ext="png", meta={})
    with pytest.raises(ValueError):
        ShardSample(key="a", data=b"x", ext="json", meta={})
    with pytest.raises(ValueError):
        ShardSample(key="a", data=b"x", ext="PNG", meta={})
    with pytest.raises(ValueError, match="USTAR"):
        ShardSample(key="k" * 97, data=b"x", ext="png", meta={})
    assert shard_name(0) == "shard-000000.tar" and shard_name(123) == "shard-000123.tar"


def test_round_trip_webdataset_and_wids(samples, tmp_path, monkeypatch):
    out = tmp_path / "out"
    plan, infos = _write_all(out, samples, max_samples=3, max_bytes=1 << 20)
    assert len(plan) == 3 and [len(rows) for rows in plan] == [3, 3, 1]
    by_key = {sample.key: sample for sample in samples}
    index = json.loads((out / "index.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1" and index["wids_version"] == 1 and index["name"] == "test-set"
    assert [shard["url"] for shard in index["shardlist"]] == [shard_name(i) for i in range(3)]
    for shard, info in zip(index["shardlist"], infos):
        data = (out / shard["url"]).read_bytes()
        assert shard["filesize"] == len(data) == info.filesize
        assert shard["md5sum"] == hashlib.md5(data).hexdigest() == info.md5sum
        # wids itself checks md5sum and count when given them.
        path = str(out / shard["url"])
        checked = IndexedTarSamples(path=path, md5sum=shard["md5sum"], expected_size=shard["nsamples"])
        checked.close()

    # webdataset streaming, no decoding.
    urls = [str(out / shard["url"]) for shard in index["shardlist"]]
    streamed = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in streamed] == [sample.key for sample in samples]
    counts = {}
    for got in streamed:
        source = by_key[got["__key__"]]
        assert set(got) - {"__key__", "__url__", "__local_path__"} == {source.ext, "json"}
        assert got[source.ext] == source.data
        assert json.loads(got["json"].decode("utf-8")) == source.meta
        counts[Path(got["__url__"]).name] = counts.get(Path(got["__url__"]).name, 0) + 1
    assert counts == {shard["url"]: shard["nsamples"] for shard in index["shardlist"]}

    # wids random access from a moved copy, run from another directory: urls resolve against the index.
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "wids-cache"  # wids copies each shard here before reading it
    dataset = wids.ShardListDataset(str(moved / "index.json"), cache_dir=str(cache), transformations=[])
    assert len(dataset) == len(samples)
    for position in reversed(range(len(dataset))):  # random access, not just a scan
        got = dataset[position]
        source = samples[position]
        assert got["__key__"] == source.key
        assert got["." + source.ext].read() == source.data  # wids gives each member as a BytesIO
        assert json.loads(got[".json"].read().decode("utf-8")) == source.meta
        assert Path(got["__shard__"]) == moved / shard_name(next(i for i, rows in enumerate(plan) if position in rows))
    dataset.close()


def test_rewrite_is_byte_identical(samples, tmp_path):
    _write_all(tmp_path / "a", samples, max_samples=2, max_bytes=30_000)
    time.sleep(1.1)  # a later run: the tar mtime must not follow the clock
    _write_all(tmp_path / "b", samples, max_samples=2, max_bytes=30_000)
    names_a = sorted(p.name for p in (tmp_path / "a").iterdir())
    names_b = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert names_a == names_b and len(names_a) >= 3
    for name in names_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_tar_layout(samples, tmp_path):
    path = tmp_path / shard_name(0)
    write_shard(path, samples)
    raw = path.read_bytes()
    assert raw[257:265] == b"ustar\x0000"  # POSIX USTAR magic and version of the first header
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [name for s in samples for name in (f"{s.key}.{s.ext}", f"{s.key}.json")]
        for member in members:
            assert member.isreg() and not member.pax_headers
            assert member.mtime == SHARD_MTIME
            assert (member.mode, member.uid, member.gid, member.uname, member.gname) == (0o444, 0, 0, "", "")
        for sample, image in zip(samples, members[::2]):
            assert tar.extractfile(image).read() == sample.data
    meta = tarfile.open(path).extractfile(f"{samples[0].key}.json").read()
    assert meta == json.dumps(samples[0].meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert "café".encode() in meta


def test_atomic_replace_and_no_temp_files(samples, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / shard_name(0)).write_bytes(b"partial garbage from a crashed run")
    (out / "index.json").write_text("{not json")
    _, infos = _write_all(out, samples, max_samples=4)
    assert sorted(p.name for p in out.iterdir()) == ["index.json", shard_name(0), shard_name(1)]
    assert tarfile.open(out / shard_name(0)).getnames()[0] == f"{samples[0].key}.{samples[0].ext}"
    assert json.loads((out / "index.json").read_text())["shardlist"][0]["md5sum"] == infos[0].md5sum

    # A write that fails half-way (NaN is not JSON) keeps the old shard and leaves no temporary file.
    before = (out / shard_name(0)).read_bytes()
    bad = ShardSample(key="zzz", data=b"img", ext="png", meta={"similarity": float("nan")})
    with pytest.raises(ValueError):
        write_shard(out / shard_name(0), [samples[0], bad])
    assert (out / shard_name(0)).read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["index.json", shard_name(0), shard_name(1)]


def test_index_json_is_deterministic(samples, tmp_path):
    _, infos = _write_all(tmp_path, samples)
    text = (tmp_path / "index.json").read_text()
    index = json.loads(text)
    assert text == json.dumps(index, sort_keys=True, indent=1) + "\n"
    assert "base" not in index
    assert shard_index(infos, name="x", base="s3://bucket/run")["base"] == "s3://bucket/run"


def test_shard_rows_fit_schema(samples):
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    rows = shard_rows("shard-000004.tar", samples[:3], when)
    assert rows == [
        {"key": s.key, "shard": "shard-000004.tar", "member": f"{s.key}.{s.ext}", "index": i, "written_at": when}
        for i, s in enumerate(samples[:3])
    ]
    validate(pa.Table.from_pylist(rows, schema=SHARDS.schema), "shards")


def test_plan_shards_keeps_each_format_in_shards_of_its_own():
    keys = [f"k{i:02d}" for i in range(7)]
    kinds = ["png", "jpg", "png", "webp", "jpg", "png", "jpg"]
    plan = plan_shards(keys, [1] * 7, max_samples=2, max_bytes=100, kinds=kinds)
    # kinds in sorted order (jpg, png, webp), each in the given order, never two kinds in one shard
    assert plan == [[1, 4], [6], [0, 2], [5], [3]]
    assert plan == plan_shards(list(keys), [1] * 7, 2, 100, kinds=list(kinds))
    assert all(len({kinds[row] for row in shard}) == 1 for shard in plan)
    # Without kinds (or a single kind) the plan is the plain one.
    assert plan_shards(keys, [1] * 7, 2, 100, kinds=["png"] * 7) == plan_shards(keys, [1] * 7, 2, 100)
    with pytest.raises(ValueError, match="kinds"):
        plan_shards(keys, [1] * 7, 2, 100, kinds=["png"])


def test_sample_meta_has_every_field_with_one_type():
    meta = sample_meta(key="a", uri="/x.png", sha256="f" * 64, width=3, height=4, format="PNG", group=7,
                       cluster=None, method="all", query_key=None, similarity=None, provenance=None)
    assert list(meta) == list(META_FIELDS)
    assert (meta["cluster"], meta["query_key"], meta["similarity"], meta["provenance"]) == (-1, "", -2.0, "{}")
    assert all(type(meta[name]) is kind for name, (kind, _) in META_FIELDS.items())
    assert type(sample_meta(similarity=np.float32(0.5))["similarity"]) is float  # numpy scalars too
    assert type(sample_meta(similarity=1)["similarity"]) is float  # JSON "1.0", never an int in one sample
    with pytest.raises(ValueError, match="not sample metadata"):
        sample_meta(caption="x")
