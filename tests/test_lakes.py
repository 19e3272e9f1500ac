"""Lake readers without a cluster: URI forms and keys, tar members read in place (unsafe ones refused), parquet
columns of bytes or paths, fsspec URLs, one container opened per partition, the split listing, storage options."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from dinolab.curate import tables
from dinolab.curate.ingest import ingest_partition
from dinolab.curate.lakes.sets import ImageSet, LakeError, make_key
from dinolab.curate.lakes import RefusedMember, listing, parse, read_partition, read_uri, source_name
from dinolab.curate.lakes import tar as tar_lake
from dinolab.curate.lakes.uris import parquet_row, tar_member, unsafe_member
from dinolab.schemas.config import IngestConfig, load_config
from dinolab.schemas.storage import REDACTED, StorageOptionError, is_secret, parse_storage_options, redact
from dinolab.schemas.tables import FILES, validate

CONFIG = IngestConfig(min_side=8)


def png(seed: int, side: int = 24) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    stream = io.BytesIO()
    Image.fromarray(array).save(stream, format="PNG")
    return stream.getvalue()


def add(archive: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size, info.mtime = kind, link, len(data) if kind == tarfile.REGTYPE else 0, 0
    archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.fixture
def hostile_tar(tmp_path):
    """A tar with good members and every member kind that must never be read or followed."""
    path = tmp_path / "box" / "lake.tar"
    path.parent.mkdir()
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        add(archive, "cats", kind=tarfile.DIRTYPE)
        add(archive, "cats/0001.png", png(1))
        add(archive, "cats/0002.PNG", png(2))
        add(archive, "cats/notes.json", b"{}")
        add(archive, "../x.png", png(3))
        add(archive, "/abs.png", png(4))
        add(archive, "cats/../../up.png", png(5))
        add(archive, "sym.png", kind=tarfile.SYMTYPE, link="/etc/passwd")
        add(archive, "hard.png", kind=tarfile.LNKTYPE, link="cats/0001.png")
        add(archive, "fifo.png", kind=tarfile.FIFOTYPE)
    return path


def files_of(uris: list[str]) -> pa.Table:
    return pa.table({"key": [make_key(u) for u in uris], "uri": uris, "role": ["pool"] * len(uris),
                     "set": ["lake"] * len(uris), "partition": [0] * len(uris)}, schema=FILES.schema)


# -- URIs and keys ------------------------------------------------------------------------------------


def test_uri_forms_parse_back_and_give_keys_of_the_member_or_row():
    member = tar_member("cats/IMG.0001.JPG", "/data/lake.tar")
    assert member == "tar://cats/IMG.0001.JPG::file:///data/lake.tar"
    assert parse(member).kind == "tar" and parse(member).member == "cats/IMG.0001.JPG"
    assert parse(member).location == "file:///data/lake.tar"
    row = parquet_row("image.bytes", 17, "s3://bucket/export/train.parquet")
    assert row == "parquet://image.bytes/17::s3://bucket/export/train.parquet"
    assert (parse(row).column, parse(row).row, parse(row).location) == ("image.bytes", 17, "s3://bucket/export/train.parquet")
    assert parse("/data/a.jpg").kind == "local" and parse("s3://b/a.jpg").kind == "url"
    assert make_key(member).startswith("IMG_0001-") and make_key(row).startswith("train_17-")
    assert make_key("s3://b/cats/IMG.0001.JPG").startswith("IMG_0001-")
    assert make_key("/lake/cats/IMG.0001.JPG") == make_key("/lake/cats/IMG.0001.JPG")  # local keys as before
    assert source_name("/lake/cats/a.png") == "/lake/cats/a.png"
    with pytest.raises(ValueError, match="tar://MEMBER::CONTAINER_URL"):
        parse("tar://no-container")


@pytest.mark.parametrize("name, refused", [
    ("cats/a.png", False), ("a..b.png", False), ("../x.png", True), ("/abs.png", True), ("a/../../b.png", True),
    ("C:\\win.png", True), ("a::b.png", True),
])
def test_unsafe_member_names(name, refused):
    assert (unsafe_member(name) is not None) == refused


# -- tar lakes ----------------------------------------------------------------------------------------


def test_tar_members_are_read_in_place_and_unsafe_ones_refused_not_followed(hostile_tar, tmp_path):
    names = tar_lake.list_members(str(hostile_tar))
    assert names == ["cats/0001.png", "cats/0002.PNG", "../x.png", "/abs.png", "cats/../../up.png", "sym.png",
                     "hard.png", "fifo.png"]  # images only (no json, no directory), refused ones kept to report
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    uris = [tar_member(name, str(hostile_tar)) for name in names]
    images = ingest_partition(files_of(uris), CONFIG)
    validate(images, "images")
    rows = {parse(row["uri"]).member: row for row in images.to_pylist()}
    assert rows["cats/0001.png"]["status"] == "ok" and rows["cats/0002.PNG"]["status"] == "ok"
    reasons = {name: rows[name]["error"] for name in names[2:]}
    assert all(row["status"] == "error" for name, row in rows.items() if name in reasons)
    assert reasons["../x.png"] == "refused tar member: member name climbs out of the archive (..)"
    assert reasons["cats/../../up.png"] == "refused tar member: member name climbs out of the archive (..)"
    assert reasons["/abs.png"] == "refused tar member: absolute member name"
    assert reasons["sym.png"] == "refused tar member: symbolic link to '/etc/passwd' (not followed)"
    assert reasons["hard.png"] == "refused tar member: hard link to 'cats/0001.png' (not followed)"
    assert reasons["fifo.png"] == "refused tar member: not a regular file"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing extracted anywhere
    assert not Path("/abs.png").exists() and not (tmp_path / "x.png").exists()
    with pytest.raises(RefusedMember):
        read_uri(tar_member("sym.png", str(hostile_tar)))


def test_a_repeated_tar_member_name_is_listed_and_named_never_dropped(tmp_path):
    path = tmp_path / "twice.tar"
    with tarfile.open(path, "w") as archive:
        add(archive, "a.png", png(1))
        add(archive, "b.png", png(2))
        add(archive, "a.png", png(3))
        add(archive, "a.png", png(4))
    uris = tar_lake.member_uris(str(path))
    assert len(uris) == 4 and len(set(uris)) == 4
    images = ingest_partition(files_of(uris), CONFIG).to_pylist()
    assert [row["status"] for row in images] == ["ok", "ok", "error", "error"]
    assert images[0]["bytes"] == len(png(1))
    assert images[2]["error"] == ("skipped: a tar member of the same name as an earlier one (only the first is "
                                  "read) (occurrence 2)")
    assert "(occurrence 3)" in images[3]["error"] and source_name(uris[3]) == "a.png"


def test_a_tar_member_uri_is_fsspec_s_own_chained_url(hostile_tar):
    uri = tar_member("cats/0001.png", str(hostile_tar))
    with fsspec.open(uri, "rb") as stream:
        assert stream.read() == png(1) == read_uri(uri)


def test_a_partition_opens_each_container_once(hostile_tar, tmp_path, monkeypatch):
    other = tmp_path / "other.tar"
    with tarfile.open(other, "w") as archive:
        for i in range(5):
            add(archive, f"{i}.png", png(10 + i))
    opened = []
    real = tar_lake.open_binary
    monkeypatch.setattr(tar_lake, "open_binary", lambda url, options=None: opened.append(url) or real(url, options))
    uris = [tar_member(f"{i}.png", str(other)) for i in range(5)] + [tar_member("cats/0001.png", str(hostile_tar)),
                                                                      tar_member("missing.png", str(other))]
    got = dict(read_partition(uris[::-1]))
    assert sorted(opened) == sorted([other.as_uri(), hostile_tar.as_uri()])
    assert [got[u] for u in uris[:5]] == [png(10 + i) for i in range(5)]
    assert isinstance(got[uris[-1]], FileNotFoundError)


def test_a_broken_container_fails_its_rows_not_the_partition(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(png(7))
    (tmp_path / "broken.tar").write_bytes(b"not a tar at all" * 100)
    uris = [str(good), tar_member("a.png", str(tmp_path / "broken.tar")), tar_member("a.png", str(tmp_path / "gone.tar"))]
    statuses = ingest_partition(files_of(uris), CONFIG).column("status").to_pylist()
    assert statuses == ["ok", "error", "error"]


def webdataset_shards(folder: Path, count: int = 2, per_shard: int = 4) -> dict[str, bytes]:
    """Webdataset shards as other tools write them: ``key.jpg``/``key.png`` with ``key.json`` and ``key.cls``."""
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for shard in range(count):
        with wds.TarWriter(str(folder / f"train-{shard:06d}.tar")) as sink:
            for i in range(per_shard):
                key = f"sample{shard:02d}{i:03d}"
                images[key] = png(100 * shard + i)
                sink.write({"__key__": key, "png": images[key], "json": {"caption": key}, "cls": i})
    return images


def test_a_webdataset_shard_lake_lists_image_members_in_archive_order(tmp_path):
    images = webdataset_shards(tmp_path / "shards")
    config = load_config(None, ["ingest.partition_size=3"])
    image_set = ImageSet(str(tmp_path / "shards" / "*.tar"), "pool", "shards")
    units = listing.units(image_set, config)
    assert [u.kind for u in units] == ["tar", "tar"]
    uris = [uri for unit in units for uri in listing.list_uris(unit, config)]
    assert [parse(u).member for u in uris] == [f"{key}.png" for key in images]
    assert [make_key(u).split("-")[0] for u in uris] == list(images)
    got = dict(read_partition(uris))
    assert [got[u] for u in uris] == list(images.values())


# -- parquet lakes ------------------------------------------------------------------------------------


def test_a_parquet_bytes_column_struct_or_binary_is_read_by_row_group(tmp_path):
    blobs = [png(i) for i in range(7)]
    table = pa.table({"image": pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(blobs)]),
                      "jpg": pa.array(blobs, pa.binary()), "label": list(range(7))})
    pq.write_table(table, tmp_path / "train.parquet", row_group_size=3)
    uris = listing.parquet.list_rows(str(tmp_path / "train.parquet"))
    assert uris[2] == f"parquet://image.bytes/2::{(tmp_path / 'train.parquet').as_uri()}"
    got = dict(read_partition(uris[::-1]))
    assert [got[u] for u in uris] == blobs
    binary = listing.parquet.list_rows(str(tmp_path / "train.parquet"), column="jpg")
    assert read_uri(binary[6]) == blobs[6]
    for column, message in [("nope", "no column 'nope'"), ("label", "not image bytes"), ("image.path", "not image bytes")]:
        with pytest.raises(LakeError, match=message):
            listing.parquet.list_rows(str(tmp_path / "train.parquet"), column=column)
    out_of_range = parquet_row("image.bytes", 99, str(tmp_path / "train.parquet"))
    assert isinstance(dict(read_partition([out_of_range]))[out_of_range], FileNotFoundError)


def test_a_parquet_path_column_resolves_paths_and_fetches_urls_only_when_asked(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png(1))
    pq.write_table(pa.table({"file": ["img/a.png", None, "img/a.png"]}), tmp_path / "paths.parquet")
    assert listing.parquet.list_rows(str(tmp_path / "paths.parquet"), path_column="file") == [str(tmp_path / "img" / "a.png")]
    pq.write_table(pa.table({"url": ["https://example.invalid/a.jpg"]}), tmp_path / "urls.parquet")
    with pytest.raises(LakeError, match="fetched only when asked: pass ingest.fetch_urls=true"):
        listing.parquet.list_rows(str(tmp_path / "urls.parquet"), path_column="url")
    assert listing.parquet.list_rows(str(tmp_path / "urls.parquet"), path_column="url", fetch_urls=True) == [
        "https://example.invalid/a.jpg"]
    pq.write_table(pa.table({"url": ["https://user:pw@example.invalid/a.jpg"]}), tmp_path / "creds.parquet")
    with pytest.raises(LakeError, match="user or password"):
        listing.parquet.list_rows(str(tmp_path / "creds.parquet"), path_column="url", fetch_urls=True)


def test_a_local_parquet_path_column_stays_in_the_tables_folder_unless_allowed(tmp_path):
    from dinolab.curate.lakes.uris import parse as parse_uri

    table_dir = tmp_path / "lake" / "tables"
    (table_dir / "img").mkdir(parents=True)
    (table_dir / "img" / "a.png").write_bytes(png(1))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.png").write_bytes(png(2))
    (table_dir / "img" / "link.png").symlink_to(tmp_path / "outside" / "x.png")
    paths = ["img/a.png", str(table_dir / "img" / "a.png"), "../../outside/x.png", "/etc/shadow", "img/link.png",
             "file:///etc/passwd", "img/\0a.png"]
    pq.write_table(pa.table({"file": paths}), table_dir / "paths.parquet")
    uris = listing.parquet.list_rows(str(table_dir / "paths.parquet"), path_column="file")
    assert uris[0] == str(table_dir / "img" / "a.png") and len(uris) == 6
    skips = {parse_uri(uri).location: parse_uri(uri).reason for uri in uris[1:]}
    assert skips == {"../../outside/x.png": "outside", "/etc/shadow": "outside", "img/link.png": "outside",
                     "/etc/passwd": "outside", "img/\\x00a.png": "nul"}
    files = pa.table({"key": [make_key(u) for u in uris], "uri": uris, "role": ["pool"] * 6, "set": ["t"] * 6,
                      "partition": pa.array([0] * 6, pa.int32())})
    rows = ingest_partition(files, CONFIG).to_pylist()
    assert [row["status"] for row in rows] == ["ok"] + ["error"] * 5 and all(r["sha256"] is None for r in rows[1:])
    assert rows[1]["error"] == ("skipped: a path outside the table's folder (ingest.allow_outside_paths=true "
                                "reads it)")
    allowed = listing.parquet.list_rows(str(table_dir / "paths.parquet"), path_column="file", allow_outside=True)
    assert str(tmp_path / "outside" / "x.png") in allowed and "/etc/shadow" in allowed


# -- fsspec URLs and the split listing ----------------------------------------------------------------


def test_file_urls_are_read_in_batches_and_listed_by_prefix(tmp_path, monkeypatch):
    for sub in ("a", "b", ".hidden"):
        (tmp_path / "lake" / sub).mkdir(parents=True)
    for i in range(40):
        (tmp_path / "lake" / "ab"[i % 2] / f"{i:03d}.png").write_bytes(png(i))
    (tmp_path / "lake" / "top.png").write_bytes(png(99))
    (tmp_path / "lake" / ".hidden" / "h.png").write_bytes(png(98))
    (tmp_path / "lake" / "a" / "readme.txt").write_text("not an image")
    root = (tmp_path / "lake").as_uri()
    config = load_config(None, ["ingest.partition_size=8"])
    image_set = ImageSet(root + "/", "pool", "lake")
    units = listing.units(image_set, config)
    assert [(u.kind, u.target) for u in units] == [("top", root + "/"), ("tree", root + "/a"), ("tree", root + "/b")]
    counts = [listing.list_unit(tmp_path / "out", n, unit, config) for n, unit in enumerate(units)]
    assert counts == [1, 20, 20]
    firsts = listing.first_partitions(counts, 8)
    assert firsts == [0, 1, 4]
    for n, unit in enumerate(units):
        listing.publish_unit(tmp_path / "out", n, unit, firsts[n], 8)
    assert listing.in_progress(tmp_path / "out")
    listing.finish(tmp_path / "out")
    assert not listing.in_progress(tmp_path / "out")
    files = tables.read_table(tmp_path / "out", "files")
    assert files.column("partition").to_pylist() == [0] + [1] * 8 + [2] * 8 + [3] * 4 + [4] * 8 + [5] * 8 + [6] * 4
    uris = files.column("uri").to_pylist()
    assert uris[0] == root + "/top.png" and all(u.startswith(root + "/") for u in uris)
    assert not any(".hidden" in u or u.endswith(".txt") for u in uris)
    batches = []
    from dinolab.curate.lakes import fsspec_lake

    real = fsspec_lake.filesystem
    monkeypatch.setattr(fsspec_lake, "BATCH", 16)
    monkeypatch.setattr(fsspec_lake, "filesystem", lambda url, options=None: batches.append(url) or real(url, options))
    got = dict(read_partition(uris + [root + "/missing.png"]))
    assert len(batches) == 1  # one filesystem for the partition
    assert got[root + "/a/000.png"] == png(0) and isinstance(got[root + "/missing.png"], FileNotFoundError)


def test_missing_prefixes_and_empty_sets_are_lake_errors(tmp_path):
    config = load_config(None)
    with pytest.raises(LakeError, match="no such folder or prefix"):
        listing.units(ImageSet((tmp_path / "nothing").as_uri(), "pool", "x"), config)
    with pytest.raises(LakeError, match="no such file matches"):
        listing.units(ImageSet(str(tmp_path / "*.tar"), "pool", "x"), config)
    with pytest.raises(LakeError, match="no image files found"):
        listing.check_counts([ImageSet("s3://b/p/", "pool", "p")], [0, 0], [0, 0])
    with pytest.raises(LakeError, match="user or password"):
        listing.check_uri("https://me:hunter2@example.invalid/lake/")


# -- storage options ----------------------------------------------------------------------------------


def test_storage_options_parse_and_secrets_are_redacted_in_one_place():
    options = parse_storage_options(["endpoint_url=http://127.0.0.1:9000", "anon=false", "key=AKIA0123",
                                     "secret=0123", "client_kwargs.region_name=eu-west-1",
                                     "client_kwargs.aws_session_token=tok", "token=42"])
    assert options == {"endpoint_url": "http://127.0.0.1:9000", "anon": False, "key": "AKIA0123", "secret": "0123",
                       "client_kwargs": {"region_name": "eu-west-1", "aws_session_token": "tok"}, "token": "42"}
    assert redact(options) == {"endpoint_url": "http://127.0.0.1:9000", "anon": False, "key": REDACTED,
                               "secret": REDACTED, "token": REDACTED,
                               "client_kwargs": {"region_name": "eu-west-1", "aws_session_token": REDACTED}}
    assert all(is_secret(name) for name in ("password", "account_key", "sas_token", "AWS_SECRET_ACCESS_KEY"))
    assert not any(is_secret(name) for name in ("endpoint_url", "anon", "region_name", "requester_pays"))
    with pytest.raises(StorageOptionError) as error:
        parse_storage_options(["AKIAJUSTTHESECRET"])
    assert "AKIAJUSTTHESECRET" not in str(error.value)


def test_a_config_never_shows_its_secrets():
    config = load_config(None, ["lake.storage_options={endpoint_url: 'http://h:1', secret: s3cr3t, key: AKIA}"])
    assert config.lake.storage_options["secret"] == "s3cr3t"  # the workers get it
    written = json.dumps(config.to_dict())
    assert "s3cr3t" not in written and "AKIA" not in written and "http://h:1" in written
    assert "s3cr3t" not in repr(config) and "s3cr3t" not in str(config.lake)
    from dinolab.schemas.config import ConfigError

    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(None, ["lake.storage_options=s3cr3t"])


@pytest.fixture
def http_folder(tmp_path):
    """``tmp_path/site`` served over HTTP on 127.0.0.1 (a thread, stopped after the test)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    site = tmp_path / "site"
    site.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield site, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=10)


def test_a_parquet_column_of_http_urls_is_fetched_when_asked(http_folder, tmp_path):
    site, base = http_folder
    for i in range(3):
        (site / f"{i}.png").write_bytes(png(i))
    urls = [f"{base}/{i}.png" for i in range(3)] + [f"{base}/missing.png"]
    pq.write_table(pa.table({"url": urls}), tmp_path / "index.parquet")
    uris = listing.parquet.list_rows(str(tmp_path / "index.parquet"), path_column="url", fetch_urls=True)
    assert uris == urls
    images = ingest_partition(files_of(uris), CONFIG).to_pylist()
    assert [row["status"] for row in images] == ["ok", "ok", "ok", "error"]
    assert images[0]["bytes"] == len(png(0)) and images[3]["error"] == "no such file"


# -- provenance and lakes found by content ------------------------------------------------------------


def test_a_tar_sample_s_metadata_members_before_or_after_its_image_are_its_provenance(tmp_path):
    path = tmp_path / "wds.tar"
    with tarfile.open(path, "w") as archive:
        add(archive, "a.json", json.dumps({"url": "http://h/a", "key": "a"}).encode())  # before (sorted, as TarWriter)
        add(archive, "a.png", png(1))
        add(archive, "b.jpg", png(2))
        add(archive, "b.txt", "a caption, café".encode())
        add(archive, "b.npy", b"\x93NUMPY binary, not metadata")
        add(archive, "c.png", png(3))
        add(archive, "c.json", b"not json")
        add(archive, "d.png", png(4))
        add(archive, "d.json", b'{"never": "read"}')
    uris = [tar_member(name, str(path)) for name in ("a.png", "b.jpg", "c.png")]
    found: dict = {}
    got = dict(read_partition(uris, provenance=found))
    assert [got[u] for u in uris] == [png(1), png(2), png(3)]
    assert [found[u] for u in uris] == [{"url": "http://h/a", "key": "a"}, {"txt": "a caption, café"}, {}]
    assert dict(read_partition(uris)) == got  # without provenance: the same bytes
    images = ingest_partition(files_of(uris), CONFIG)
    assert images.column("provenance").to_pylist() == ['{"key":"a","url":"http://h/a"}', '{"txt":"a caption, café"}',
                                                       None]


def test_a_curated_sample_gives_back_its_lake_s_provenance_and_keeps_its_key(tmp_path):
    from dinolab.curate.lakes.provenance import as_text, from_members

    meta = {"key": "IMG_0001-0ad2bd17b2bc", "provenance": '{"caption":"a cat","url":"http://h/1.jpg"}', "group": 3}
    assert from_members({"json": json.dumps(meta).encode()}) == {"caption": "a cat", "url": "http://h/1.jpg"}
    assert as_text({"score": float("nan"), "n": 1}) == '{"n":1,"score":null}' and as_text({}) is None
    shard = tmp_path / "shard-000000.tar"
    assert make_key(tar_member("IMG_0001-0ad2bd17b2bc.jpg", str(shard))) == "IMG_0001-0ad2bd17b2bc"
    assert make_key(tar_member("IMG_0001-0ad2bd17b2bc.jpg", str(shard)), "curated") == "curated-IMG_0001-0ad2bd17b2bc"
    # Not a curated key: the stem and a hash of the URI, as always (also for files named like one).
    assert make_key(tar_member("000000001.jpg", str(shard))).startswith("000000001-")
    assert make_key("/lake/IMG_0001-0ad2bd17b2bc.jpg") != "IMG_0001-0ad2bd17b2bc"


def test_the_image_bytes_column_is_found_without_being_named(tmp_path):
    from dinolab.curate.lakes.parquet import find_image_column

    images = pa.table({"jpg": [png(1)], "url": ["http://h/1"], "caption": ["c"]})
    assert find_image_column(images.schema) == ("jpg", None)
    assert find_image_column(pa.table({"picture": [{"bytes": png(1), "path": "p.png"}]}).schema) == ("picture", "bytes")
    assert find_image_column(images.schema, "jpg") == ("jpg", None)
    with pytest.raises(LakeError, match="no single column of image bytes"):
        find_image_column(pa.table({"a": [b"x"], "b": [b"y"]}).schema)
    with pytest.raises(LakeError, match="no column 'photo'"):
        find_image_column(images.schema, "photo")  # a column asked for by name is never guessed
    pq.write_table(images, tmp_path / "t.parquet")
    found: dict = {}
    uris = listing.parquet.list_rows(str(tmp_path / "t.parquet"))
    assert uris == [parquet_row("jpg", 0, str(tmp_path / "t.parquet"))]
    assert dict(read_partition(uris, provenance=found)) == {uris[0]: png(1)}
    assert found == {uris[0]: {"url": "http://h/1", "caption": "c"}}
    # A second picture (a struct holding bytes) is data, not provenance: left out like the image.
    masked = pa.table({"image": [{"bytes": png(1), "path": "a.png"}], "mask": [{"bytes": png(2)}], "label": [3]})
    pq.write_table(masked, tmp_path / "masked.parquet")
    found = {}
    dict(read_partition(listing.parquet.list_rows(str(tmp_path / "masked.parquet")), provenance=found))
    assert list(found.values()) == [{"label": 3}]


def test_wids_indexes_and_folders_of_tars_are_found_by_content(tmp_path):
    from dinolab.curate.lakes.detect import detect

    shards = webdataset_shards(tmp_path / "out" / "shards")
    tars = sorted(str(p) for p in (tmp_path / "out" / "shards").glob("*.tar"))
    index = {"__kind__": "wids-shard-index-v1", "shardlist": [{"url": Path(t).name, "nsamples": 1} for t in tars]}
    assert detect(str(tmp_path / "out" / "shards")).containers == tars  # tars only
    (tmp_path / "out" / "shards" / "index.json").write_text(json.dumps({**index, "shardlist": index["shardlist"][::-1]}))
    for form in ("out/shards", "out/shards/index.json", "out"):
        found = detect(str(tmp_path / form))
        assert found.kind == "tar" and found.containers == tars[::-1], form  # the index's order
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(LakeError, match="not a wids shard index"):
        detect(str(tmp_path / "other.json"))
    image_folder = tmp_path / "photos"
    image_folder.mkdir()
    (image_folder / "a.png").write_bytes(png(1))
    (image_folder / "old.tar").write_bytes((tmp_path / "out" / "shards" / Path(tars[0]).name).read_bytes())
    assert detect(str(image_folder)) is None  # images at the top: a folder of images, as before
    nested = tmp_path / "nested"
    (nested / "cats").mkdir(parents=True)
    (nested / "cats" / "a.png").write_bytes(png(1))
    (nested / "backup.tar").write_bytes((tmp_path / "out" / "shards" / Path(tars[0]).name).read_bytes())
    assert detect(str(nested)) is None and listing.set_kind(str(nested)) == "files"  # images in subfolders
    assert len(shards) > 0
