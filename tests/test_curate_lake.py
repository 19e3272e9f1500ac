"""Lake listing and keys: recursive folders and globs, stable dot-free unique keys, partitions across sets."""

import re

import pytest
from PIL import Image

from dinolab.curate.lakes.sets import LakeError, files_table, list_set, make_key, name_sets
from dinolab.schemas.tables import validate


def _lake(root):
    (root / "a" / "deep").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for path in ("a/x.PNG", "a/deep/y.jpg", "a/deep/y.jpeg", "z.gif", ".hidden/h.png"):
        Image.new("RGB", (20, 20)).save(root / path, format="PNG")
    (root / "notes.txt").write_text("not an image")
    return root


def test_folders_are_listed_recursively_and_globs_match(tmp_path):
    root = _lake(tmp_path)
    assert [p.replace(str(root), "") for p in list_set(str(root))] == ["/a/deep/y.jpeg", "/a/deep/y.jpg", "/a/x.PNG", "/z.gif"]
    assert [p.replace(str(root), "") for p in list_set(str(root / "a" / "**" / "*.jp*g"))] == ["/a/deep/y.jpeg", "/a/deep/y.jpg"]
    with pytest.raises(LakeError, match="no such folder"):
        list_set(str(root / "missing"))
    with pytest.raises(LakeError, match="no image files"):
        list_set(str(root / "*.txt"))


def test_keys_are_stable_unique_and_have_no_dots():
    first, second = make_key("/lake/IMG.0001.JPG"), make_key("/other/IMG.0001.JPG")
    assert first == make_key("/lake/IMG.0001.JPG") and first != second
    assert re.fullmatch(r"[A-Za-z0-9_-]+", first) and first.startswith("IMG_0001-")
    assert make_key("/lake/a.png", prefix="eval").startswith("eval-a-")


def test_the_listing_partitions_every_set_and_names_sets_uniquely(tmp_path):
    root = _lake(tmp_path)
    taken: set[str] = set()
    sets = name_sets([str(root / "a"), str(root / "a")], "pool", taken) + name_sets([str(root)], "eval", taken)
    assert [s.name for s in sets] == ["a", "a_2", tmp_path.name]
    table = files_table(sets[:1] + sets[2:], partition_size=2)
    validate(table, "files")
    assert table.column("partition").to_pylist() == [0, 0, 1, 2, 2, 3, 3]
    assert table.column("role").to_pylist() == ["pool"] * 3 + ["eval"] * 4
    assert len(set(table.column("key").to_pylist())) == 7  # the same files in two sets get two keys


def _links_lake(tmp_path):
    """A lake with a link out of it, a link to a folder, a loop, a FIFO, a dotfile and a non-UTF-8 name."""
    import os

    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (20, 20), "red").save(outside / "secret.png")
    root = tmp_path / "lake"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (20, 20)).save(root / "real.png")
    Image.new("RGB", (20, 20)).save(root / "sub" / "deep.png")
    (root / "passwd.jpg").symlink_to(outside / "secret.png")
    (root / "elsewhere").symlink_to(outside, target_is_directory=True)
    (root / "sub" / "back").symlink_to(root, target_is_directory=True)  # a loop when followed
    os.mkfifo(root / "pipe.png")
    Image.new("RGB", (20, 20)).save(root / "._real.png")
    Image.new("RGB", (20, 20)).save(os.fsdecode(bytes(root) + b"/caf\xe9.png"))
    return root


def test_folder_lakes_refuse_links_and_name_every_skipped_entry(tmp_path):
    from dinolab.curate.ingest import ingest_partition
    from dinolab.curate.lakes import parse
    from dinolab.schemas.config import IngestConfig

    root = _links_lake(tmp_path)
    listed = list_set(str(root))
    kept = [uri for uri in listed if not uri.startswith("skip://")]
    assert kept == [str(root / "real.png"), str(root / "sub" / "deep.png")]
    reasons = {parse(uri).location.replace(str(root), ""): parse(uri).reason for uri in listed if uri not in kept}
    assert reasons == {"/passwd.jpg": "link", "/elsewhere": "link", "/sub/back": "link", "/pipe.png": "special",
                       "/._real.png": "hidden", "/caf\\xe9.png": "name"}
    table = files_table([name_sets([str(root)], "pool", set())[0]], partition_size=100)
    validate(table, "files")
    images = {parse(row["uri"]).location.replace(str(root), ""): row
              for row in ingest_partition(table, IngestConfig(min_side=8)).to_pylist()}
    assert images["/real.png"]["status"] == "ok"
    assert images["/passwd.jpg"]["status"] == "error" and images["/passwd.jpg"]["sha256"] is None
    assert images["/passwd.jpg"]["error"].startswith("skipped: a symbolic link, not followed (ingest.follow_links")
    assert "FIFO" in images["/pipe.png"]["error"] and "hidden" in images["/._real.png"]["error"]
    assert "UTF-8" in images["/caf\\xe9.png"]["error"]


def test_following_links_reads_them_once_and_stops_at_loops(tmp_path):
    from dinolab.curate.lakes import parse

    root = _links_lake(tmp_path)
    listed = list_set(str(root), follow_links=True)
    kept = sorted(uri.replace(str(root), "") for uri in listed if not uri.startswith("skip://"))
    assert kept == ["/elsewhere/secret.png", "/passwd.jpg", "/real.png", "/sub/deep.png"]
    assert {parse(uri).location.replace(str(root), ""): parse(uri).reason
            for uri in listed if uri.startswith("skip://")} == {
        "/sub/back": "loop", "/pipe.png": "special", "/._real.png": "hidden", "/caf\\xe9.png": "name"}


def test_glob_lakes_refuse_links_too(tmp_path):
    from dinolab.curate.lakes import parse

    root = _links_lake(tmp_path)
    listed = list_set(str(root / "**" / "*.*g"))
    assert {uri.replace(str(root), "") for uri in listed if not uri.startswith("skip://")} == {"/real.png", "/sub/deep.png"}
    assert {parse(uri).reason for uri in listed if uri.startswith("skip://")} >= {"link", "special"}
    assert not any("secret" in uri for uri in listed if not uri.startswith("skip://"))


def test_a_lake_of_links_only_says_why_it_is_empty(tmp_path):
    (tmp_path / "lake").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "real.png")
    (tmp_path / "lake" / "a.png").symlink_to(tmp_path / "real.png")
    with pytest.raises(LakeError, match="1 skipped: a symbolic link, not followed"):
        list_set(str(tmp_path / "lake"))
