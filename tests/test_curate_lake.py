"""Lake listing and keys: recursive folders and globs, stable dot-free unique keys, partitions across sets."""

import re

import pytest
from PIL import Image

from curate.lake import LakeError, files_table, list_set, make_key, name_sets
from schemas.tables import validate


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
