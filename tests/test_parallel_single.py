"""Single-process behaviour of pretrain.parallel: DCP round trip without a process group, EMA update."""

import copy

import pytest
import torch
from torch import nn

from dinolab.pretrain.models import build_vit
from dinolab.pretrain.parallel import ema_update_sharded, load_training_state, save_training_state

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids thread-synchronisation stalls on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _step(model, optimizer):
    loss = model(torch.randn(2, 3, 28, 28)).square().sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_dcp_round_trip_without_process_group(tmp_path):
    model = build_vit("vit_pico", layerscale_init=1.0)
    teacher = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _step(model, optimizer)
    extra = {"step": 7, "center": torch.arange(5.0), "sampler": {"epoch": 2, "consumed": 12}}
    save_training_state(tmp_path / "ckpt", model, optimizer, {"teacher": teacher}, extra)

    torch.manual_seed(1)
    restored = build_vit("vit_pico", layerscale_init=1.0)
    restored_teacher = build_vit("vit_pico", layerscale_init=1.0).requires_grad_(False)
    restored_optimizer = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    template = {"step": 0, "center": torch.zeros(5), "sampler": {"epoch": 0, "consumed": 0}}
    loaded = load_training_state(
        tmp_path / "ckpt", restored, restored_optimizer, {"teacher": restored_teacher}, template
    )
    assert loaded["step"] == 7 and loaded["sampler"] == {"epoch": 2, "consumed": 12}
    torch.testing.assert_close(loaded["center"], extra["center"])
    for ours, theirs in ((restored, model), (restored_teacher, teacher)):
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # Same optimizer moments: the next step gives identical weights.
    torch.manual_seed(2)
    _step(model, optimizer)
    torch.manual_seed(2)
    _step(restored, restored_optimizer)
    for a, b in zip(restored.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_loading_a_non_checkpoint_directory_is_a_clear_error(tmp_path):
    model = build_vit("vit_pico")
    with pytest.raises(FileNotFoundError, match="torch.distributed.checkpoint"):
        load_training_state(tmp_path, model, torch.optim.AdamW(model.parameters()))


def test_ema_update_on_plain_modules_is_the_dino_formula():
    student, teacher = nn.Linear(3, 2), nn.Linear(3, 2)
    expected = [0.9 * t.detach() + 0.1 * s.detach() for t, s in zip(teacher.parameters(), student.parameters())]
    ema_update_sharded(teacher, student, momentum=0.9)
    for got, want in zip(teacher.parameters(), expected):
        torch.testing.assert_close(got.detach(), want)
    with pytest.raises(ValueError, match="shard"):
        ema_update_sharded(nn.Linear(3, 2), nn.Linear(2, 3), 0.9)
    with pytest.raises(ValueError, match="EMA twins"):
        ema_update_sharded(nn.Linear(3, 2), nn.Linear(3, 2, bias=False), 0.9)
