"""Distillation (DINOv2 Sec. 5): a frozen tiny teacher into a smaller student, in both modes; exact
resume after SIGKILL, the time budget and the final k-NN of the EMA student."""

import json
import signal
import subprocess
import sys

import pytest
import torch
from pretrain_tiny import TINY_OVERRIDES

from dinolab import pretrain
from dinolab.pretrain.cli import main
from dinolab.pretrain.checkpoints import save_backbone
from dinolab.pretrain.data.eval_splits import fashion_mnist_eval
from dinolab.pretrain.models import build_vit
from dinolab.pretrain.train.checkpoint import TrainingCheckpointError
from dinolab.pretrain.train.config import build_config
from dinolab.pretrain.train.distill import Distiller, cosine_distance
from dinolab.pretrain.train.knn_eval import knn_evaluate
from dinolab.pretrain.train.loop import Trainer

# Constant teacher temperature so that a falling loss means the student learns, not a schedule.
FIXED = ["loss.warmup_teacher_temp=0.04", "loss.teacher_temp=0.04", "optim.base_lr=0.004",
         "optim.batch_size=16", "run.eval_every_steps=0"]
TEACHER = [*TINY_OVERRIDES, *FIXED, "model.embed_dim=48"]
STUDENT = [*TINY_OVERRIDES, *FIXED, "model.embed_dim=32", "model.depth=1", "optim.epochs=12",
           "optim.warmup_epochs=1"]  # arch: vit_pico


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A few pretraining steps of a 48-wide, 2-block teacher through the pretraining API."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("teacher")
    Trainer(build_config("fmnist-tiny", TEACHER), "fashion-mnist", out, data_limit=32, evaluate=False,
            progress=False).run()
    return out


def _snapshot(module):
    return {key: value.clone() for key, value in module.state_dict().items()}


def _distil(teacher, mode, out, overrides=()):
    distiller = Distiller(build_config("fmnist-tiny", [*STUDENT, "model.arch=vit_pico", *overrides]), teacher, mode, "fashion-mnist",
                          out, data_limit=16, progress=False)
    before = _snapshot(distiller.model.teacher)
    result = distiller.run()
    after = distiller.model.teacher.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"teacher {key} changed"
    return distiller, result


def _assert_learns(losses, steps=12):
    assert len(losses) == steps
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.9 * first, losses


def test_heads_mode(teacher_run, tmp_path):
    distiller, result = _distil(teacher_run, "heads", tmp_path)
    _assert_learns(result.losses)
    saved = torch.load(teacher_run / "checkpoint.pth", weights_only=True)
    teacher_state = distiller.model.teacher.state_dict()
    for key, value in saved["teacher"].items():  # the teacher is the checkpoint's, untouched
        assert torch.equal(teacher_state[key], value), key
    student = distiller.model.student
    assert student["backbone"].embed_dim == 32 and len(student["backbone"].blocks) == 1
    assert student["dino_head"].last_layer.weight.shape[0] == 64  # the teacher's K
    # the released layout cannot store the head count of a non-released width: pass it
    exported = pretrain.load_backbone(tmp_path / "student_backbone.pth", num_heads=2)
    ema = distiller.ema["backbone"].eval()
    images = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(exported(images), ema(images))
    assert not torch.equal(ema.state_dict()["blocks.0.attn.qkv.weight"],
                           student["backbone"].state_dict()["blocks.0.attn.qkv.weight"])  # EMA, not the student
    safetensors = pretrain.load_backbone(tmp_path / "student_backbone.safetensors")
    torch.testing.assert_close(safetensors(images), ema(images))
    # the final k-NN is the exported EMA student's, measured on the configured splits
    summary = json.loads((tmp_path / "summary.json").read_text())
    splits = fashion_mnist_eval(distiller.config).final
    assert len(splits[0].labels) == 512 and len(splits[1].labels) == 128  # final_eval_*_limit
    expected = knn_evaluate(safetensors, *splits, feature=distiller.config.run.knn_feature)
    assert summary["steps"] == 12 and summary["mode"] == "heads"
    for k in (10, 20):
        assert summary["knn"][str(k)]["top1"] == pytest.approx(expected[k]["top1"])
        assert result.final_knn[k]["top1"] == pytest.approx(expected[k]["top1"])
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "knn_final"
    assert records[-1]["top1_k20"] == pytest.approx(expected[20]["top1"])


def test_features_mode_from_checkpoint(teacher_run, tmp_path):
    distiller, result = _distil(teacher_run, "features", tmp_path)
    _assert_learns(result.losses)
    assert isinstance(distiller.model.student["projection"], torch.nn.Linear)  # 32 -> 48
    assert distiller.model.student["projection"].weight.shape == (48, 32)
    assert pretrain.load_backbone(tmp_path / "student_backbone.safetensors").embed_dim == 32


def test_features_mode_from_released_style_backbone(tmp_path):
    """A head-less backbone file with another patch size: the teacher sees the crops resized to the
    student's token grid (28 px / patch 7 = 4 x 4 = 56 px / patch 14)."""
    teacher = build_vit("vit_pico", patch_size=14, img_size=56, layerscale_init=1.0)
    path = save_backbone(teacher, tmp_path / "teacher.safetensors", fmt="safetensors")
    distiller, result = _distil(path, "features", tmp_path / "out")
    _assert_learns(result.losses)
    assert distiller.model.teacher.patch_size == 14
    with pytest.raises(TrainingCheckpointError, match="--mode features"):
        Distiller(build_config("fmnist-tiny", [*STUDENT, "model.arch=vit_pico"]), path, "heads", "fashion-mnist", tmp_path / "bad",
                  data_limit=16, progress=False)


def test_cosine_distance_by_hand():
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    teacher = torch.tensor([[0.0, 2.0], [3.0, 3.0]])
    assert cosine_distance(student, teacher).item() == pytest.approx((1.0 + 0.0) / 2)


def test_cli(teacher_run, tmp_path, capsys):
    code = main(["distill", "--teacher", str(teacher_run), "--student", "vit_pico", "--mode", "features",
                 "--data", "fashion-mnist", "--limit", "16", "--out", str(tmp_path), "--no-progress",
                 *STUDENT, "optim.epochs=2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "student_backbone.pth" in out
    assert "k-NN of the EMA student on the test split: k=10 top-1" in out
    assert pretrain.load_backbone(tmp_path / "student_backbone.safetensors").embed_dim == 32
    code = main(["distill", "--teacher", str(tmp_path / "student_backbone.safetensors"), "--student", "vit_pico",
                 "--data", "fashion-mnist", "--limit", "16", "--out", str(tmp_path / "x"), *STUDENT])
    assert code == 2
    assert "--mode features" in capsys.readouterr().err
    code = main(["distill", "--teacher", str(teacher_run), "--student", "vit_nope", "--data", "fashion-mnist",
                 "--limit", "16", "--out", str(tmp_path / "y"), *STUDENT])
    assert code == 2
    assert "unknown architecture 'vit_nope'" in capsys.readouterr().err


# 8 steps per epoch (128 images, batch 16), 2 epochs; checkpoints every 5 steps, killed at step 7.
# Softmax centring, so that the checkpoint's DINO centre is state that must be restored.
RESUME = [*STUDENT, "optim.epochs=2", "run.checkpoint_every_steps=5", "loss.centering=softmax"]

KILLED_RUN = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from dinolab.pretrain.train.config import build_config
from dinolab.pretrain.train.distill import Distiller

def kill_at_step_7(step, losses):
    if step == 7:
        os.kill(os.getpid(), signal.SIGKILL)

config = build_config("fmnist-tiny", ["model.arch=vit_pico", *sys.argv[3:]])
Distiller(config, sys.argv[1], "heads", "fashion-mnist", sys.argv[2], data_limit=128, evaluate=False,
          progress=False, step_hook=kill_at_step_7).run()
"""


def _distil_cli(teacher, out, *flags):
    command = [sys.executable, "-m", "dinolab.pretrain", "distill", "--teacher", str(teacher), "--student", "vit_pico",
               "--data", "fashion-mnist", "--limit", "128", "--out", str(out), "--no-eval", "--no-progress",
               *flags, *RESUME]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_sigkill_then_resume_matches_uninterrupted_run(teacher_run, tmp_path):
    reference = _distil_cli(teacher_run, tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr

    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(teacher_run), str(tmp_path / "resumed"), *RESUME],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    checkpoint = tmp_path / "resumed" / "distill_checkpoint.pth"
    assert torch.load(checkpoint, weights_only=True)["step"] == 5
    assert not list((tmp_path / "resumed").glob(".distill_checkpoint.pth.tmp*"))

    resumed = _distil_cli(teacher_run, tmp_path / "resumed", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 5" in resumed.stdout

    expected = torch.load(tmp_path / "reference" / "distill_checkpoint.pth", weights_only=True)
    actual = torch.load(checkpoint, weights_only=True)
    assert actual["step"] == expected["step"] == actual["total_steps"] == 16
    for part in ("student", "ema"):
        assert actual[part].keys() == expected[part].keys()
        for key, value in expected[part].items():
            torch.testing.assert_close(actual[part][key], value, rtol=0, atol=1e-6, msg=f"{part}.{key}")
    torch.testing.assert_close(actual["dino_center"], expected["dino_center"], rtol=0, atol=1e-6)
    assert not torch.equal(actual["dino_center"], torch.zeros_like(actual["dino_center"]))  # it was updated


def test_resume_refuses_another_mode_teacher_or_configuration(teacher_run, tmp_path):
    out = tmp_path / "run"
    config = build_config("fmnist-tiny", [*RESUME, "model.arch=vit_pico", "optim.epochs=0.25"])
    Distiller(config, teacher_run, "heads", "fashion-mnist", out, data_limit=128, evaluate=False,
              progress=False).run()
    other_teacher = tmp_path / "teacher.safetensors"
    save_backbone(build_vit("vit_pico", patch_size=7, img_size=28), other_teacher, fmt="safetensors")
    changed = build_config("fmnist-tiny", [*RESUME, "model.arch=vit_pico", "optim.epochs=0.25", "optim.base_lr=0.001"])
    for args, message in (((config, teacher_run, "features"), "not --mode features"),
                          ((config, other_teacher, "heads"), "distilled from teacher"),
                          ((changed, teacher_run, "heads"), "sections optim differ")):
        with pytest.raises(TrainingCheckpointError, match=message):
            Distiller(*args, "fashion-mnist", out, resume=True, data_limit=128, evaluate=False, progress=False)


def test_time_budget_fits_the_run(teacher_run, tmp_path):
    """A 0.18-second budget: the step count is fitted (far below 12 epochs) and the run ends on it. (With 1.2 s,
    twelve epochs of 8 steps fit whenever a step took under 12.5 ms, which a quiet machine manages.)"""
    config = build_config("fmnist-tiny", [*STUDENT, "model.arch=vit_pico", "run.minutes=0.003"])
    distiller = Distiller(config, teacher_run, "heads", "fashion-mnist", tmp_path, data_limit=128,
                          evaluate=False, progress=False)
    full_length = 12 * 8
    assert 1 <= distiller.total_steps < full_length
    assert len(distiller.schedules.lr) == distiller.total_steps  # schedules fitted to the budget
    result = distiller.run()
    assert result.steps <= distiller.total_steps and result.final_knn is None
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == result.steps and summary["knn"] is None
