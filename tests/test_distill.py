"""Distillation (DINOv2 Sec. 5): a frozen tiny teacher into a smaller student, in both modes."""

import pytest
import torch
from pretrain_tiny import TINY_OVERRIDES

import dinolab
from dinolab.cli import main
from dinolab.checkpoints import save_backbone
from dinolab.models import build_vit
from dinolab.train.checkpoint import TrainingCheckpointError
from dinolab.train.config import build_config
from dinolab.train.distill import Distiller, cosine_distance
from dinolab.train.loop import Trainer

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
    exported = dinolab.load_backbone(tmp_path / "student_backbone.pth", num_heads=2)
    ema = distiller.ema["backbone"].eval()
    images = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(exported(images), ema(images))
    assert not torch.equal(ema.state_dict()["blocks.0.attn.qkv.weight"],
                           student["backbone"].state_dict()["blocks.0.attn.qkv.weight"])  # EMA, not the student
    safetensors = dinolab.load_backbone(tmp_path / "student_backbone.safetensors")
    torch.testing.assert_close(safetensors(images), ema(images))


def test_features_mode_from_checkpoint(teacher_run, tmp_path):
    distiller, result = _distil(teacher_run, "features", tmp_path)
    _assert_learns(result.losses)
    assert isinstance(distiller.model.student["projection"], torch.nn.Linear)  # 32 -> 48
    assert distiller.model.student["projection"].weight.shape == (48, 32)
    assert dinolab.load_backbone(tmp_path / "student_backbone.safetensors").embed_dim == 32


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
    assert "student_backbone.pth" in capsys.readouterr().out
    assert dinolab.load_backbone(tmp_path / "student_backbone.safetensors").embed_dim == 32
    code = main(["distill", "--teacher", str(tmp_path / "student_backbone.safetensors"), "--student", "vit_pico",
                 "--data", "fashion-mnist", "--limit", "16", "--out", str(tmp_path / "x"), *STUDENT])
    assert code == 2
    assert "--mode features" in capsys.readouterr().err
    code = main(["distill", "--teacher", str(teacher_run), "--student", "vit_nope", "--data", "fashion-mnist",
                 "--limit", "16", "--out", str(tmp_path / "y"), *STUDENT])
    assert code == 2
    assert "unknown architecture 'vit_nope'" in capsys.readouterr().err
