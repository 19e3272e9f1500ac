"""EMA teacher update: limits, a hand-computed step, and error cases."""

import pytest
import torch
from torch import nn

from dinolab.pretrain.train.ema import update_teacher


def _pair():
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    return student, teacher


def test_momentum_zero_copies_student_and_one_keeps_teacher():
    student, teacher = _pair()
    kept = [p.clone() for p in teacher.parameters()]
    update_teacher(list(student.parameters()), list(teacher.parameters()), momentum=1.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), kept))
    update_teacher(list(student.parameters()), list(teacher.parameters()), momentum=0.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters()))


def test_intermediate_momentum_by_hand_and_no_grad():
    student, teacher = _pair()
    s0 = [p.detach().clone() for p in student.parameters()]
    t0 = [p.detach().clone() for p in teacher.parameters()]
    update_teacher(list(student.parameters()), list(teacher.parameters()), momentum=0.9)
    for t, a, b in zip(teacher.parameters(), t0, s0):
        torch.testing.assert_close(t.detach(), 0.9 * a + 0.1 * b)
        assert t.grad is None
    assert all(torch.equal(p, s) for p, s in zip(student.parameters(), s0))  # student untouched


def test_mismatched_lists_raise():
    student, teacher = _pair()
    with pytest.raises(ValueError):
        update_teacher(list(student.parameters()), list(teacher.parameters())[:1], momentum=0.5)
    with pytest.raises(ValueError):
        update_teacher([torch.zeros(2)], [torch.zeros(3)], momentum=0.5)
