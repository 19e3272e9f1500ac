"""A run killed with SIGKILL after a checkpoint and resumed ends with the same teacher as an
uninterrupted run (bit-exact: every random draw of a step is seeded by (seed, step))."""

import signal
import subprocess
import sys
from pathlib import Path

import torch
from pretrain_tiny import TINY_OVERRIDES

# 8 steps per epoch, 2 epochs; checkpoints every 5 steps, so the kill at step 7 resumes mid-epoch.
OVERRIDES = [*TINY_OVERRIDES, "optim.epochs=2", "run.checkpoint_every_steps=5", "run.eval_every_steps=0"]

KILLED_RUN = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from dinolab.pretrain.train.config import build_config
from dinolab.pretrain.train.loop import Trainer

def kill_at_step_7(step, output):
    if step == 7:
        os.kill(os.getpid(), signal.SIGKILL)

config = build_config("fmnist-tiny", sys.argv[2:])
Trainer(config, "fashion-mnist", sys.argv[1], data_limit=256, evaluate=False, progress=False,
        step_hook=kill_at_step_7).run()
"""


def _cli(out: Path, *flags: str, overrides: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "dinolab.pretrain", "train", "--data", "fashion-mnist", "--limit", "256",
               "--out", str(out), "--no-eval", "--no-progress", *flags, *OVERRIDES, *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    reference = _cli(tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr

    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(tmp_path / "resumed"), *OVERRIDES],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert torch.load(tmp_path / "resumed" / "checkpoint.pth", weights_only=True)["step"] == 5
    assert not list((tmp_path / "resumed").glob(".checkpoint.pth.tmp*"))

    resumed = _cli(tmp_path / "resumed", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 5" in resumed.stdout

    expected = torch.load(tmp_path / "reference" / "checkpoint.pth", weights_only=True)
    actual = torch.load(tmp_path / "resumed" / "checkpoint.pth", weights_only=True)
    assert actual["step"] == expected["step"] == 16
    for part in ("teacher", "student"):
        assert actual[part].keys() == expected[part].keys()
        for key, value in expected[part].items():
            torch.testing.assert_close(actual[part][key], value, rtol=0, atol=1e-6, msg=f"{part}.{key}")
    torch.testing.assert_close(actual["dino_center"], expected["dino_center"], rtol=0, atol=1e-6)


def test_resume_refuses_a_different_configuration(tmp_path):
    assert _cli(tmp_path / "run").returncode == 0
    changed = _cli(tmp_path / "run", "--resume", overrides=("head.out_dim=128",))
    assert changed.returncode == 2
    assert "different configuration (sections head differ)" in changed.stderr
