"""The one storage module: what a URL is (``file://`` is a URL naming a local file), storage options, and
local and ``memory://`` folders behind the same calls."""

import pytest

from dinolab.core import storage
from dinolab.core.storage import RemotePath, StorageOptionError, is_remote, is_url, location, parse_storage_options, protocol


@pytest.mark.parametrize("text, url, remote, scheme", [
    ("s3://bucket/run", True, True, "s3"),
    ("memory://run", True, True, "memory"),
    ("tar://a.png::s3://b/x.tar", True, True, "tar"),
    ("file:///data/run", True, False, "file"),
    ("FILE:///data/run", True, False, "file"),
    ("local:///data/run", True, False, "local"),
    ("/data/run", False, False, "file"),
    ("runs/a://b", False, False, "file"),   # a relative path holding '://' after its first part
])
def test_file_urls_are_urls_that_name_local_files(text, url, remote, scheme):
    assert (is_url(text), is_remote(text), protocol(text)) == (url, remote, scheme)


def test_a_file_url_is_written_as_the_local_path(tmp_path):
    target = location((tmp_path / "out").as_uri())
    assert target == tmp_path / "out"
    storage.write_bytes(storage.join(target, "a", "b.bin"), b"abc")
    assert (tmp_path / "out" / "a" / "b.bin").read_bytes() == b"abc"
    assert storage.read_bytes(target / "a" / "b.bin", 1, 3) == b"bc"


def test_a_store_folder_carries_its_options_and_reads_ranges():
    folder = location("memory://storage-test/run", {"skip_instance_cache": False})
    assert isinstance(folder, RemotePath) and folder.storage_options == {"skip_instance_cache": False}
    storage.write_bytes(folder / "part-00000.bin", b"0123456789")
    assert storage.names(folder, "part-*.bin") == ["part-00000.bin"]
    assert storage.sizes(folder) == {"part-00000.bin": 10}
    assert storage.read_bytes(folder / "part-00000.bin", 2, 5) == b"234"
    storage.remove_tree(folder)
    assert not storage.exists(folder)


def test_storage_options_parse_pairs_over_the_environment():
    environ = {storage.STORAGE_OPTIONS_ENV: '{"anon": true, "client_kwargs": {"region_name": "x"}}'}
    options = parse_storage_options(["anon=false", "client_kwargs.region_name=eu", "n=3"], environ)
    assert options == {"anon": False, "client_kwargs": {"region_name": "eu"}, "n": "3"}
    with pytest.raises(StorageOptionError, match="KEY=VALUE"):
        parse_storage_options(["secret"])
    with pytest.raises(StorageOptionError, match="not a JSON object"):
        parse_storage_options([], {storage.STORAGE_OPTIONS_ENV: "[1]"})


def test_a_protocol_without_a_backend_is_one_clear_error():
    with pytest.raises(storage.StorageError, match="no fsspec filesystem for nosuch://"):
        storage.filesystem("nosuch://x")


def test_curation_and_pretraining_share_one_shard_folder_and_index_kind():
    from dinolab.curate import shards as curate_shards, stages
    from dinolab.pretrain.data import shards as pretrain_shards

    assert curate_shards.INDEX_KIND is pretrain_shards.INDEX_KIND is storage.INDEX_KIND
    assert stages.SHARD_DIR is storage.SHARD_DIR
