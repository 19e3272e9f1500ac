"""``curate run --pretrain``: the trainer starts on the new shards after the report, as its own process
(or torchrun processes), its output streamed; bad requests fail before curation; reruns resume."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from pretrain_tiny import TINY_OVERRIDES
from shard_sets import fashion_mnist_pngs, write_shards
from typer.testing import CliRunner

from lakes import write_lake
from dinolab.pipelines import pretrain_stage
from dinolab.pipelines.cli import app

runner = CliRunner()
DEMO = ["--config", "demo", "ingest.partition_size=40", "shard.max_samples=30"]
TINY = [*TINY_OVERRIDES, "optim.batch_size=16", "run.checkpoint_every_steps=2"]


def test_command_line_of_the_stage(tmp_path):
    one = pretrain_stage.pretrain_command(tmp_path, "fmnist-tiny", ["optim.epochs=2"])
    assert one == [sys.executable, "-m", "dinolab.pretrain", "train", "--data", str(tmp_path / "shards"),
                   "--out", str(tmp_path / "pretrain"), "--preset", "fmnist-tiny", "--resume", "--no-progress",
                   "optim.epochs=2"]
    four = pretrain_stage.pretrain_command(tmp_path, "dinov2-vits14", [], nproc=4)
    assert four[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4"]
    assert four[6:10] == ["-m", "dinolab.pretrain", "train", "--data"]


def test_command_line_for_shards_in_a_bucket_carries_no_secret(tmp_path):
    from dinolab.curate import output
    from dinolab.core.storage import STORAGE_OPTIONS_ENV, parse_storage_options

    options = {"endpoint_url": "http://127.0.0.1:9", "secret": "s3cr3t", "anon": False,
               "client_kwargs": {"region_name": "eu-west-1", "aws_session_token": "t0ken"}}
    out = output.location("s3://bucket/run", options)
    command = pretrain_stage.pretrain_command(out, "fmnist-tiny", [], pretrain_out=tmp_path / "train")
    assert command[command.index("--data") + 1] == "s3://bucket/run/shards"
    assert command[command.index("--out") + 1] == str(tmp_path / "train")
    pairs = [command[i + 1] for i, word in enumerate(command) if word == "--storage-option"]
    assert pairs == ["endpoint_url=http://127.0.0.1:9", "anon=false", "client_kwargs.region_name=eu-west-1"]
    assert "s3cr3t" not in " ".join(command) and "t0ken" not in " ".join(command)
    assert parse_storage_options(pairs, {STORAGE_OPTIONS_ENV: json.dumps(options)}) == options  # what the trainer gets
    with pytest.raises(pretrain_stage.PretrainStageError, match="--pretrain-out"):
        pretrain_stage.pretrain_command(out, "fmnist-tiny", [])


def test_bad_requests_fail_before_any_curation(tmp_path):
    for flags, message in ((["--pretrain", "nope"], "unknown preset 'nope'"),
                           (["--pretrain", "fmnist-tiny", "--pretrain-arg", "optim.epochz=2"], "epochz"),
                           (["--pretrain", "fmnist-tiny", "--pretrain-arg", "optim.epochs"], "section.key=value")):
        result = runner.invoke(app, ["run", "--lake", str(tmp_path), "--out", str(tmp_path / "out"), *flags])
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("curate run: error: --pretrain") and message in result.stderr
        assert not (tmp_path / "out").exists()


def test_a_rerun_on_other_shards_is_refused(tmp_path):
    write_shards(tmp_path / "shards", fashion_mnist_pngs(4), [4])
    pretrain_stage.check_same_shards(tmp_path)
    assert json.loads((tmp_path / "pretrain" / "shards.json").read_text())["index_sha256"]
    pretrain_stage.check_same_shards(tmp_path)  # the same shards: resumes
    write_shards(tmp_path / "shards", fashion_mnist_pngs(5), [5])
    with pytest.raises(pretrain_stage.PretrainStageError, match="trained on other shards"):
        pretrain_stage.check_same_shards(tmp_path)


@pytest.mark.slow
def test_curate_run_then_pretrain_on_the_new_shards_and_resume(tmp_path):
    folders = write_lake(tmp_path / "lake", pool=60, curated=8, evals=2)
    out = tmp_path / "out"
    args = ["run", "--lake", str(folders["pool"]), "--curated", str(folders["curated"]), "--eval", str(folders["eval"]),
            "--out", str(out), "--workers", "2", *DEMO, "--pretrain", "fmnist-tiny"]
    for override in TINY:
        args += ["--pretrain-arg", override]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stdout + result.stderr
    index = json.loads((out / "shards" / "index.json").read_text())
    samples = sum(shard["nsamples"] for shard in index["shardlist"])
    assert len(index["shardlist"]) >= 2
    stdout = result.stdout
    assert stdout.index("report:") < stdout.index("pretrain stage: ") < stdout.index("trained ")  # after the report
    assert f"{samples} samples in {len(index['shardlist'])} shards from {out / 'shards'}" in stdout
    checkpoint = torch.load(out / "pretrain" / "checkpoint.pth", weights_only=True)
    assert checkpoint["step"] == samples // 16 and (out / "pretrain" / "teacher_backbone.safetensors").is_file()

    again = runner.invoke(app, args, catch_exceptions=False)  # everything done: curation skips, training resumes
    assert again.exit_code == 0, again.stdout + again.stderr
    assert f"resuming at step {samples // 16}" in again.stdout


@pytest.mark.slow
def test_the_stage_runs_torchrun_with_the_processes_asked_for(tmp_path):
    write_shards(tmp_path / "shards", fashion_mnist_pngs(64), [40, 24])
    lines: list[str] = []
    command = pretrain_stage.pretrain_command(tmp_path, "fmnist-tiny", [*TINY, "optim.batch_size=8"], nproc=2)
    assert pretrain_stage.run_pretrain(tmp_path, command, lines.append) == 0, "\n".join(lines)
    output = "\n".join(lines)
    assert "64 samples in 2 shards" in output and "4 steps/epoch" in output  # 64 // 2 ranks // 8
    assert torch.load(tmp_path / "pretrain" / "checkpoint.pth", weights_only=True)["world_size"] == 2
    assert (tmp_path / "pretrain" / "checkpoint.dcp" / ".metadata").is_file()
