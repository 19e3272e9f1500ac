"""``curate run`` refuses bad input in one line with exit code 2, before any stage runs and writing nothing."""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dinolab.pipelines.cli import app
from dinolab.schemas.config import PipelineConfig

runner = CliRunner()


def curate(*args) -> typing.Any:
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def lake(tmp_path):
    folder = tmp_path / "lake"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((80, 80, 3), 40 * i, np.uint8)).save(folder / f"im_{i}.png")
    return folder


def assert_refused(result, out, *words: str) -> None:
    assert result.exit_code == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("override, allowed", [
    ("dedup.threshold=-1", "(0, 1]"), ("dedup.threshold=1.5", "(0, 1]"), ("dedup.threshold=.nan", "(0, 1]"),
    ("dedup.k=0", ">= 1"), ("sample.target=-5", ">= 0"), ("ingest.partition_size=0", ">= 1"),
    ("shard.max_samples=0", ">= 1"), ("cluster.levels=0", ">= 1"), ("cluster.ks=[0]", ">= 1"),
    ("embed.batch_size=0", ">= 1"), ("ingest.max_pixels=0", ">= 1"), ("sample.per_query=-1", ">= 1"),
])
def test_an_out_of_range_value_is_refused_before_any_stage(lake, tmp_path, override, allowed):
    out = tmp_path / "out"
    result = curate("run", "--lake", lake, "--out", out, "--workers", 1, override)
    assert_refused(result, out, override.split("=")[0], allowed)


def test_every_number_of_the_config_declares_its_range():
    for section in dataclasses.fields(PipelineConfig):
        section_type = section.default_factory  # type: ignore[misc]
        hints = typing.get_type_hints(section_type)
        for item in dataclasses.fields(section_type):
            hint = hints[item.name]
            numeric = hint in (int, float) or (typing.get_origin(hint) is tuple and typing.get_args(hint)[0] in (int, float))
            if numeric:
                assert "range" in item.metadata, f"{section.name}.{item.name} has no declared range"


def test_user_info_in_url_options_never_reaches_run_json_or_the_output(lake, tmp_path):
    out = tmp_path / "out"
    result = curate("ingest", "--lake", lake, "--out", out, "--workers", 1,
                    "--storage-option", "endpoint_url=http://alice:pw-one@127.0.0.1:9",
                    "--storage-option", "config_kwargs.proxies.https=http://bob:pw-two@proxy.invalid:3128/")
    assert result.exit_code == 0, result.stdout + result.stderr
    run = (out / "run.json").read_text()
    assert "pw-one" not in run and "pw-two" not in run and "alice" not in run and "bob" not in run
    options = __import__("json").loads(run)["config"]["lake"]["storage_options"]
    assert options == {"endpoint_url": "http://<redacted>@127.0.0.1:9",
                       "config_kwargs": {"proxies": {"https": "http://<redacted>@proxy.invalid:3128/"}}}
    assert "pw-" not in result.stdout + result.stderr


def test_the_config_repr_hides_url_user_info():
    from dinolab.schemas.config import load_config

    config = load_config(None, ["lake.storage_options={client_kwargs: {endpoint_url: 'https://u:hunter2@h/'}}"])
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.to_dict())
    assert config.lake.storage_options["client_kwargs"]["endpoint_url"] == "https://u:hunter2@h/"  # workers get it


def test_a_curated_set_filtered_by_min_side_says_so_and_how_to_change_it(lake, tmp_path):
    curated = tmp_path / "curated"
    curated.mkdir()
    for i in range(4):
        Image.fromarray(np.full((28, 30, 3), 50 * i, np.uint8)).save(curated / f"tiny_{i}.png")
    out = tmp_path / "out"
    result = curate("run", "--lake", lake, "--curated", curated, "--out", out, "--workers", 1)  # lvd: min_side 64
    assert result.exit_code == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "4 of 4 were filtered as smaller than ingest.min_side=64" in result.stderr
    assert "ingest.min_side=28 keeps them" in result.stderr


def test_a_parquet_lake_without_the_column_is_one_line_and_no_worker_traceback(tmp_path, capfd):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"caption": ["x", "y"]}), tmp_path / "t.parquet")  # no column of image bytes
    out = tmp_path / "out"
    result = curate("ingest", "--lake", tmp_path / "t.parquet", "--out", out, "--workers", 1)
    captured = capfd.readouterr()
    everything = result.stdout + result.stderr + captured.out + captured.err
    assert result.exit_code == 2, everything
    # no task failed on a worker and nothing of the lake error came back as a traceback (a worker's heartbeat
    # traceback while the cluster shuts down is distributed's own noise, not this command's output)
    assert "Compute Failed" not in everything and "LakeError" not in everything, everything
    assert "Traceback" not in result.stdout + result.stderr, everything
    assert result.stderr.count("\n") == 1 and "no column 'image' and no single column of image bytes" in result.stderr
    assert not (out / "tables").exists()


def test_an_out_that_is_not_a_folder_is_one_line(lake, tmp_path):
    for out in ("/dev/null", "/dev/null/run", str(tmp_path / "lake" / "im_0.png")):
        result = curate("run", "--lake", lake, "--out", out, "--workers", 1)
        assert result.exit_code == 2, result.stdout + result.stderr
        assert result.stderr.count("\n") == 1 and "is not a folder" in result.stderr, result.stderr


def test_a_wrong_embedder_is_refused_before_ingest(lake, tmp_path):
    out = tmp_path / "out"
    result = curate("run", "--lake", lake, "--out", out, "--workers", 1, "--embedder", "vit_nonsense")
    assert_refused(result, out, "vit_nonsense", "not an architecture name")


def test_weights_that_need_code_are_refused_without_the_unsafe_hint(lake, tmp_path):
    import argparse

    import torch

    torch.save({"model": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "weights.pth")
    out = tmp_path / "out"
    result = curate("run", "--lake", lake, "--out", out, "--workers", 1, "--embedder", tmp_path / "weights.pth")
    assert_refused(result, out, "refusing to load", "argparse.Namespace")
    assert "weights_only" not in result.stderr and "trusted source" not in result.stderr


def test_odd_names_in_a_folder_lake_are_skipped_named_files_and_the_listing_goes_on(lake, tmp_path):
    import os

    from dinolab.curate import tables
    from dinolab.curate.lakes import parse

    Image.new("RGB", (80, 80)).save(os.fsdecode(bytes(lake) + b"/caf\xe9.png"))
    (lake / "passwd.jpg").symlink_to("/etc/passwd")
    out = tmp_path / "out"
    result = curate("ingest", "--lake", lake, "--out", out, "--workers", 1)
    assert result.exit_code == 0, result.stdout + result.stderr
    rows = {parse(row["uri"]).location.replace(str(lake), ""): row for row in tables.read_table(out, "images").to_pylist()}
    assert sorted(rows) == ["/caf\\xe9.png", "/im_0.png", "/im_1.png", "/im_2.png", "/passwd.jpg"]
    assert rows["/caf\\xe9.png"]["error"] == "skipped: a file name that is not valid UTF-8"
    assert rows["/passwd.jpg"]["error"].startswith("skipped: a symbolic link") and rows["/passwd.jpg"]["sha256"] is None


def test_a_nul_byte_in_a_parquet_path_column_is_a_skipped_named_file(lake, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dinolab.curate import tables

    pq.write_table(pa.table({"file": ["im_0.png", "im_1\0.png"]}), lake / "index.parquet")
    out = tmp_path / "out"
    result = curate("ingest", "--lake", lake / "index.parquet", "--out", out, "--workers", 1, "ingest.path_column=file")
    assert result.exit_code == 0, result.stdout + result.stderr
    rows = tables.read_table(out, "images").to_pylist()
    assert [row["status"] for row in rows] == ["ok", "error"]
    assert rows[1]["uri"] == "skip://nul::im_1\\x00.png" and rows[1]["error"] == "skipped: a path holding a NUL byte"
