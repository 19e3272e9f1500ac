"""The copy-descriptor recipe: InfoNCE with several positives, the entropy term, exact resume after SIGKILL,
and a checkpoint that ``dedup.descriptor`` loads."""

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from dinolab.curate.copydetect.descriptor import describe_images, load_descriptor
from dinolab.curate.copydetect.train import (CHECKPOINT, LOG, CopyDetectorTrainer, CopyTrainConfig, entropy_loss, info_nce,
                                     positives)
from dinolab.pipelines.cli import app

TINY = CopyTrainConfig(arch="resnet18", dim=16, size=32, batch_size=4, steps=6, warmup_steps=2, checkpoint_every=2)


def _photos(count=6, side=48):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (side, side + 8 * i, 3), dtype=np.uint8)) for i in range(count)]


def test_positives_link_both_views_and_mixed_partners():
    mask = positives(np.array([0, 1, 2, 0, 1, 2]), np.array([-1, -1, -1, -1, 2, -1]))  # row 4 mixed with row 2
    assert not mask.diagonal().any()
    assert mask[0, 3] and mask[3, 0] and not mask[0, 1]
    assert mask[4, 1] and mask[4, 2] and mask[4, 5] and mask[2, 4] and mask[5, 4]  # image 2's views and row 4
    assert not mask[0, 4]


def test_info_nce_equals_the_formula_and_rewards_matching_views():
    torch.manual_seed(0)
    x = F.normalize(torch.randn(6, 8), dim=1)
    mask = positives(np.array([0, 1, 2, 0, 1, 2]), np.full(6, -1))
    expected = []
    for i in range(6):
        others = [j for j in range(6) if j != i]
        denominator = sum(math.exp(float(x[i] @ x[j]) / 0.1) for j in others)
        expected.append(-math.log(math.exp(float(x[i] @ x[(i + 3) % 6]) / 0.1) / denominator))
    assert info_nce(x, mask, 0.1).item() == pytest.approx(sum(expected) / 6, rel=1e-5)
    aligned = torch.cat([x[:3], x[:3] + 0.01 * torch.randn(3, 8)])
    assert info_nce(F.normalize(aligned, dim=1), mask, 0.1) < info_nce(x, mask, 0.1)


def test_entropy_term_is_minus_mean_log_nearest_non_matching_distance():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    mask = positives(np.array([0, 1, 0, 2]), np.full(4, -1))  # rows 0 and 2 are one image
    nearest = torch.tensor([math.sqrt(2), math.sqrt(2), math.sqrt(2), math.sqrt(2)])
    assert entropy_loss(x, mask).item() == pytest.approx(-torch.log(nearest).mean().item(), rel=1e-5)


def test_training_checkpoint_loads_as_a_dedup_descriptor(tmp_path):
    trainer = CopyDetectorTrainer(_photos(), tmp_path, TINY, say=lambda _: None)
    checkpoint = trainer.run()
    losses = [line for line in (tmp_path / LOG).read_text().splitlines()]
    assert checkpoint == tmp_path / CHECKPOINT and len(losses) == TINY.steps
    model = load_descriptor(checkpoint)
    vectors = describe_images(model, _photos(2))
    assert vectors.shape == (2, 16) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    expected = trainer.model.backbone.state_dict()
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    with pytest.raises(FileExistsError, match="--resume"):
        CopyDetectorTrainer(_photos(), tmp_path, TINY)
    with pytest.raises(ValueError, match="another configuration"):
        CopyDetectorTrainer(_photos(), tmp_path, CopyTrainConfig(**{**TINY.__dict__, "lr": 1.0}), resume=True)


def _write_lake(folder, count=6):
    folder.mkdir()
    for i, image in enumerate(_photos(count)):
        image.save(folder / f"photo_{i}.jpg")
    (folder / "broken.jpg").write_bytes(b"not an image")


def _command(lake, out, steps):
    return [sys.executable, "-m", "dinolab.pipelines", "train-copy-detector", "--lake", str(lake), "--out", str(out),
            "--steps", str(steps), "--batch-size", "4", "--size", "32", "--checkpoint-every", "2"]


def test_cli_killed_mid_run_resumes_to_the_same_weights(tmp_path):
    lake = tmp_path / "lake"
    _write_lake(lake)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = subprocess.run(_command(lake, tmp_path / "ref", 8), capture_output=True, text=True, env=env, timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]
    assert "6 images decoded (1 unreadable, skipped)" in reference.stdout

    out = tmp_path / "killed"
    process = subprocess.Popen(_command(lake, out, 8), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if (out / CHECKPOINT).is_file() and len((out / LOG).read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stopped_at = torch.load(out / CHECKPOINT, weights_only=True)["step"]
    assert 2 <= stopped_at < 8
    resumed = subprocess.run(_command(lake, out, 8) + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming the copy detector at step {stopped_at}" in resumed.stdout
    final, expected = (torch.load(path / CHECKPOINT, weights_only=True) for path in (out, tmp_path / "ref"))
    assert final["step"] == expected["step"] == 8
    for key, value in expected["model"].items():
        torch.testing.assert_close(final["model"][key], value, rtol=0, atol=0)


def test_cli_refuses_a_lake_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, _command(tmp_path / "empty", tmp_path / "out", 2)[3:])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "error:" in result.stderr
    assert not (tmp_path / "out").exists()
