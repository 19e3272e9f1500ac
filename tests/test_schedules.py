"""Cosine schedules, the DINOv2 schedule bundle and batch-size lr scaling."""

import math

import pytest
import torch

from dinolab.pretrain.train.schedules import TrainingSchedules, cosine_schedule, scaled_lr


def test_cosine_schedule_warmup_and_endpoints():
    values = cosine_schedule(1.0, 0.1, total_iters=14, warmup_iters=4, warmup_start=0.2)
    assert values.shape == (14,)
    torch.testing.assert_close(values[:4], torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64))
    assert values[4].item() == pytest.approx(1.0)
    assert values[-1].item() == pytest.approx(0.1)
    # Middle of the cosine part (10 steps, progress 4.5/9 at index 8.5): check index 9 by hand.
    assert values[9].item() == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 5 / 9)))
    assert torch.all(values[4:][1:] <= values[4:][:-1])  # monotone decay after warm-up


def test_cosine_schedule_without_warmup_and_constant():
    values = cosine_schedule(0.04, 0.4, total_iters=5)
    assert values[0].item() == pytest.approx(0.04) and values[-1].item() == pytest.approx(0.4)
    assert torch.all(cosine_schedule(0.5, 0.5, 7) == 0.5)
    assert cosine_schedule(1.0, 0.0, 3, warmup_iters=10).tolist() == pytest.approx([0.0, 0.1, 0.2])


def test_training_schedules_build_and_at():
    sched = TrainingSchedules.build(
        total_iters=100, iters_per_epoch=10, lr=0.002, min_lr=1e-6, warmup_epochs=1, wd=0.04, wd_end=0.4,
        momentum=0.992, momentum_end=1.0, teacher_temp=0.04, teacher_temp_end=0.07,
        teacher_temp_warmup_epochs=3, freeze_last_layer_epochs=1,
    )
    assert len(sched) == 100
    assert all(len(getattr(sched, name)) == 100 for name in ["lr", "weight_decay", "teacher_momentum", "teacher_temp", "last_layer_lr"])
    first, warm, last = sched.at(0), sched.at(10), sched.at(99)
    assert first["lr"] == 0.0 and sched.at(5)["lr"] == pytest.approx(0.001)
    assert warm["lr"] == pytest.approx(0.002) and last["lr"] == pytest.approx(1e-6)
    assert first["weight_decay"] == pytest.approx(0.04) and last["weight_decay"] == pytest.approx(0.4)
    assert first["teacher_momentum"] == pytest.approx(0.992) and last["teacher_momentum"] == pytest.approx(1.0)
    assert first["teacher_temp"] == pytest.approx(0.04)
    assert sched.at(15)["teacher_temp"] == pytest.approx(0.04 + 0.03 * 15 / 30)
    assert sched.at(30)["teacher_temp"] == pytest.approx(0.07) and last["teacher_temp"] == pytest.approx(0.07)
    assert all(sched.at(i)["last_layer_lr"] == 0.0 for i in range(10))
    assert sched.at(10)["last_layer_lr"] == pytest.approx(sched.at(10)["lr"])
    assert sched.at(150) == last  # past the end keeps the final values


def test_scaled_lr_rules():
    assert scaled_lr(0.004, 1024) == pytest.approx(0.004)
    assert scaled_lr(0.004, 256) == pytest.approx(0.002)
    assert scaled_lr(5e-4, 512, rule="linear") == pytest.approx(1e-3)
    with pytest.raises(ValueError):
        scaled_lr(1e-3, 64, rule="cubic")
