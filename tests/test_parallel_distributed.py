"""Real 2-process (gloo, CPU) DDP and FSDP2 runs equal a 1-process run; DCP checkpoints cross world sizes.

One launch of 2 processes holds every multi-process check (process start-up dominates the time):

- DDP and FSDP2 training (vit_pico + head, ``DINOLoss`` with centred and Sinkhorn-Knopp teacher
  targets, both all-reduced over ranks, AdamW, EMA teacher on local shards) give the same losses,
  centre and final teacher weights as one process training on the same global batches;
- an FSDP2 checkpoint written by 2 ranks resumes in 1 process, and a 1-process checkpoint resumes on
  2 FSDP2 ranks (and 2 DDP ranks), each continuing exactly like the uninterrupted run.
"""

from __future__ import annotations

import copy
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dinolab.pretrain.models import build_vit
from dinolab.pretrain.train.ema import update_teacher
from dinolab.pretrain.train.losses import DINOLoss
from dinolab.pretrain.parallel import (
    ResumableDistributedSampler,
    ema_update_sharded,
    load_training_state,
    save_training_state,
    shard_model,
    wrap_ddp,
)

NUM_ITEMS, GLOBAL_BATCH, STEPS, RESUME_AT = 24, 4, 4, 2
OUT_DIM, STUDENT_TEMP, TEACHER_TEMP, CENTER_MOMENTUM, EMA_MOMENTUM = 32, 0.1, 0.04, 0.9, 0.5


class TinyDino(nn.Module):
    """Backbone + linear head; ``forward`` takes both views at once (one DDP/FSDP forward per step)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = build_vit("vit_pico", layerscale_init=1.0)
        self.head = nn.Linear(64, OUT_DIM)

    def forward(self, views: list[torch.Tensor], masks: list[torch.Tensor | None]) -> list[torch.Tensor]:
        outputs = self.backbone.forward_features(views, masks)
        return [self.head(out.cls_token) for out in outputs]


def _dataset() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(NUM_ITEMS, 3, 28, 28, generator=generator)
    masks = torch.zeros(NUM_ITEMS, 4, dtype=torch.bool)
    masks[torch.arange(NUM_ITEMS), torch.arange(NUM_ITEMS) % 4] = True  # one masked patch per image
    return images, masks


def _world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def _dino_loss(loss_fn: DINOLoss, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """DINO loss with centred targets (DINO) plus Sinkhorn-Knopp targets (DINOv2); both reduce over ranks."""
    centred = [loss_fn.softmax_center_teacher(t, TEACHER_TEMP) for t in teacher]
    balanced = loss_fn.sinkhorn_knopp_teacher(torch.cat(teacher), TEACHER_TEMP).chunk(len(teacher))
    loss = loss_fn(student, centred) + loss_fn(student, list(balanced))
    loss_fn.update_center(torch.cat(teacher))
    return loss


def _train(mode: str, start: str | None = None, save: str | None = None, ema=ema_update_sharded) -> dict:
    """Train to STEPS (from RESUME_AT when ``start`` is a checkpoint); return losses and the teacher."""
    rank, world = _world()
    torch.manual_seed(0)
    student = TinyDino()
    teacher = copy.deepcopy(student).requires_grad_(False)
    if mode == "fsdp":
        student, teacher = shard_model(student), shard_model(teacher, inference_only=True)
        trained = student
    elif mode == "ddp":
        trained = wrap_ddp(student)
    else:
        trained = student
    # eps 1e-6: the key bias gets an exactly-zero gradient in theory, fp noise in practice, which
    # Adam with eps 1e-8 would turn into full-size steps of random sign on each world size.
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-4, eps=1e-6, weight_decay=0.04)
    sampler = ResumableDistributedSampler(NUM_ITEMS, rank=rank, world_size=world, seed=1)
    loss_fn, step = DINOLoss(OUT_DIM, STUDENT_TEMP, CENTER_MOMENTUM), 0
    if start is not None:
        template = {"center": loss_fn.center, "step": 0, "sampler": sampler.state_dict()}
        extra = load_training_state(start, student, optimizer, {"teacher": teacher}, template)
        step = extra["step"]
        loss_fn.center.copy_(extra["center"])
        sampler.load_state_dict(extra["sampler"])
    images, masks = _dataset()
    losses = []
    while step < STEPS:
        if save is not None and step == RESUME_AT:
            extra = {"center": loss_fn.center, "step": step, "sampler": sampler.state_dict()}
            save_training_state(save, student, optimizer, {"teacher": teacher}, extra)
        index = torch.tensor(list(sampler)[: GLOBAL_BATCH // world])
        views = [images[index], images[index].flip(-1)]
        with torch.no_grad():
            teacher_out = teacher(views, [None, None])
        student_out = trained(views, [masks[index], None])
        loss = _dino_loss(loss_fn, student_out, teacher_out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema(teacher, student, EMA_MOMENTUM)
        sampler.advance(GLOBAL_BATCH)
        losses.append(float(_all_reduce_sum(loss.detach().clone())) / world)
        step += 1
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(teacher, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    teacher_state = {k: v.clone() for k, v in full.items()}
    return {"losses": losses, "teacher": teacher_state, "center": loss_fn.center.clone()}


def _project_ema(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    update_teacher(list(student.parameters()), list(teacher.parameters()), momentum)


def _worker(rank: int, port: int, workdir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results = {
            "ddp": _train("ddp"),
            "fsdp": _train("fsdp", save=f"{workdir}/ckpt_2ranks"),
            "fsdp_from_1": _train("fsdp", start=f"{workdir}/ckpt_1proc", ema=_project_ema),
            "ddp_from_1": _train("ddp", start=f"{workdir}/ckpt_1proc"),
        }
        if rank == 0:
            torch.save(results, f"{workdir}/results.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_same_run(run: dict, reference: dict, first_step: int = 0) -> None:
    torch.testing.assert_close(
        torch.tensor(run["losses"]), torch.tensor(reference["losses"][first_step:]), atol=1e-5, rtol=1e-5
    )
    assert run["teacher"].keys() == reference["teacher"].keys()
    for name, value in reference["teacher"].items():
        torch.testing.assert_close(run["teacher"][name], value, atol=2e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(run["center"], reference["center"], atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_two_process_ddp_fsdp_and_dcp_match_single_process(tmp_path: Path):
    torch.set_num_threads(1)
    reference = _train("plain", save=str(tmp_path / "ckpt_1proc"))
    assert len(reference["losses"]) == STEPS
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    results = torch.load(tmp_path / "results.pt", weights_only=True)

    _assert_same_run(results["ddp"], reference)
    _assert_same_run(results["fsdp"], reference)
    _assert_same_run(results["fsdp_from_1"], reference, first_step=RESUME_AT)
    _assert_same_run(results["ddp_from_1"], reference, first_step=RESUME_AT)
    resumed_in_1 = _train("plain", start=str(tmp_path / "ckpt_2ranks"))
    _assert_same_run(resumed_in_1, reference, first_step=RESUME_AT)
    # Training moved the teacher: the comparison is not between untouched initial weights.
    torch.manual_seed(0)
    initial = TinyDino().state_dict()
    moved = max((reference["teacher"][k] - v).abs().max() for k, v in initial.items())
    assert moved > 20 * 2e-5  # well above the tolerance of the comparisons
    assert reference["losses"][0] != reference["losses"][-1]
