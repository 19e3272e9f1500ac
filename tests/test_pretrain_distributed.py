"""``Trainer`` under 2 gloo processes equals one process with the same global batch (DDP and FSDP2),
and its checkpoints resume across world sizes (2 → 1 from ``checkpoint.dcp/``, 1 → 2 from
``checkpoint.pth``), each continuing like the uninterrupted run. A DDP run fed from webdataset shards
of the same images (uneven shards, PNG bytes decoded in each rank) trains like the in-memory one.

All multi-process runs share one ``torch.multiprocessing.spawn`` launch (start-up dominates). The
processes find each other through the torchrun environment variables, so ``Trainer`` joins the process
group itself (``pretrain.distributed.init_from_env``), as under ``torchrun``.

Parity settings: KoLeo off (it is per process by design) and no stochastic depth (its draws come from
each process's default generator). Everything else of the DINOv2 recipe is on: multi-crop with all
photometric augmentations, iBOT masks, Sinkhorn-Knopp teacher, AdamW with layer decay, clipping,
EMA teacher, k-NN evaluation.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from pretrain_tiny import TINY_OVERRIDES
from shard_sets import fashion_mnist_pngs, write_shards

from dinolab.pretrain.data.eval_splits import EvalData, fashion_mnist_eval_splits
from dinolab.pretrain.train.config import build_config
from dinolab.pretrain.train.loop import Trainer

GLOBAL_BATCH, WORLD, IMAGES, RESUME_AT = 8, 2, 48, 3  # 6 steps; checkpoints at steps 3 and 6
# lr ~ 0.01 and teacher momentum 0.5: weights move far beyond the comparison tolerances in 6 steps.
OVERRIDES = [*TINY_OVERRIDES, "loss.koleo_weight=0", "model.drop_path_rate=0", "run.log_every=1",
             "optim.base_lr=0.1", "optim.teacher_momentum=0.5", "optim.teacher_momentum_end=0.5",
             "run.checkpoint_every_steps=3", "run.eval_every_steps=0", "run.checkpoint_every_minutes=60"]


def _config(world: int, *extra: str):
    return build_config("fmnist-tiny", [*OVERRIDES, f"optim.batch_size={GLOBAL_BATCH // world}", *extra])


def _eval_data() -> EvalData:
    splits = fashion_mnist_eval_splits(train_limit=64, test_limit=24)
    return EvalData(periodic=splits, final=splits)


def _copy_at_step(step: int, source: Path, target: Path):
    """A step hook copying ``source`` (the checkpoint written at the end of step ``step``) to ``target``."""

    def hook(index: int, _output) -> None:
        if index == step and int(os.environ.get("RANK", 0)) == 0:
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)

    return hook


def _train(out: Path, world: int, *extra: str, resume: bool = False, step_hook=None,
           data: str = "fashion-mnist") -> dict:
    trainer = Trainer(_config(world, *extra), data, out, resume=resume, eval_data=_eval_data(),
                      data_limit=IMAGES, progress=False, step_hook=step_hook)
    result = trainer.run()
    exported = trainer.export_teacher()
    return {"final_knn": result.final_knn, "steps": result.steps, "exported": [str(p) for p in exported]}


def _losses(out: Path) -> dict[int, dict[str, float]]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: {k: r[k] for k in ("total", "dino", "ibot")} for r in records if r["kind"] == "train"}


def _worker(rank: int, port: int, tmp: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    tmp_path = Path(tmp)
    results = {
        "ddp": _train(tmp_path / "ddp", WORLD, "run.parallel=ddp"),
        "fsdp": _train(tmp_path / "fsdp", WORLD, "run.parallel=fsdp",
                       step_hook=_copy_at_step(RESUME_AT, tmp_path / "fsdp" / "checkpoint.dcp",
                                               tmp_path / "from_2" / "checkpoint.dcp")),
        "fsdp_from_1": _train(tmp_path / "from_1", WORLD, "run.parallel=fsdp", resume=True),
        "ddp_shards": _train(tmp_path / "ddp_shards", WORLD, "run.parallel=ddp", "run.shard_cache_gb=0",
                             data=str(tmp_path / "shards")),  # decoded batch by batch in each rank
    }
    if rank == 0:
        torch.save(results, tmp_path / "results.pt")
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_same_run(out: Path, reference: Path, first_step: int = 1) -> None:
    """Per-step losses from ``first_step`` and the final student, teacher and optimiser state agree."""
    expected, actual = _losses(reference), _losses(out)
    steps = [s for s in expected if s >= first_step]
    assert steps and all(s in actual for s in steps)
    for step in steps:
        for name, value in expected[step].items():
            assert actual[step][name] == pytest.approx(value, rel=1e-4, abs=1e-5), (out.name, step, name)
    want = torch.load(reference / "checkpoint.pth", weights_only=True)
    got = torch.load(out / "checkpoint.pth", weights_only=True)
    assert got["step"] == want["step"] == IMAGES // GLOBAL_BATCH
    for part in ("teacher", "student"):
        assert got[part].keys() == want[part].keys()
        for key, value in want[part].items():
            torch.testing.assert_close(got[part][key], value, rtol=1e-4, atol=2e-5, msg=f"{out.name} {part}.{key}")
    for index, slots in want["optimizer"]["state"].items():
        torch.testing.assert_close(got["optimizer"]["state"][index]["exp_avg"], slots["exp_avg"],
                                   rtol=1e-3, atol=1e-6, msg=f"{out.name} exp_avg {index}")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_processes_train_like_one_and_resume_across_world_sizes(tmp_path: Path):
    torch.set_num_threads(1)
    single = _train(tmp_path / "single", 1,
                    step_hook=_copy_at_step(RESUME_AT, tmp_path / "single" / "checkpoint.pth",
                                            tmp_path / "from_1" / "checkpoint.pth"))
    assert torch.load(tmp_path / "from_1" / "checkpoint.pth", weights_only=True)["step"] == RESUME_AT
    shutil.copy2(tmp_path / "from_1" / "checkpoint.pth", tmp_path / "step3.pth")  # from_1 is overwritten
    write_shards(tmp_path / "shards", fashion_mnist_pngs(IMAGES), [20, 3, 25])  # the same images, uneven shards

    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    results = torch.load(tmp_path / "results.pt", weights_only=False)

    # 2 -> 1: the FSDP run's DCP checkpoint of step 3 continues in this (single) process.
    resumed = Trainer(_config(1), "fashion-mnist", tmp_path / "from_2", resume=True, eval_data=_eval_data(),
                      data_limit=IMAGES, progress=False)
    assert resumed.step == RESUME_AT
    resumed_result = resumed.run()

    reference = tmp_path / "single"
    _assert_same_run(tmp_path / "ddp", reference)
    _assert_same_run(tmp_path / "fsdp", reference)
    _assert_same_run(tmp_path / "ddp_shards", reference)  # PNGs decoded in each rank train like the tensors
    _assert_same_run(tmp_path / "from_1", reference, first_step=RESUME_AT + 1)
    _assert_same_run(tmp_path / "from_2", reference, first_step=RESUME_AT + 1)
    for name in ("ddp", "fsdp", "fsdp_from_1", "ddp_shards"):
        assert results[name]["final_knn"] == single["final_knn"], name  # features gathered from both ranks
    assert resumed_result.final_knn == single["final_knn"]

    # Resuming with another global batch (4 = 1 process x 4) is refused with the fix named.
    from dinolab.pretrain.train.checkpoint import TrainingCheckpointError

    with pytest.raises(TrainingCheckpointError, match=r"global batch was 8 \(2 process\(es\)\), now 4"):
        Trainer(_config(WORLD), "fashion-mnist", tmp_path / "fsdp", resume=True, evaluate=False,
                data_limit=IMAGES, progress=False)

    # Distributed runs leave the same files as a single process: checkpoint.pth and teacher exports.
    assert (tmp_path / "fsdp" / "checkpoint.dcp" / ".metadata").is_file()
    from dinolab.pretrain.checkpoints import load_backbone

    exported = load_backbone(tmp_path / "fsdp" / "teacher_backbone.safetensors")
    expected = load_backbone(tmp_path / "single" / "teacher_backbone.safetensors")
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(exported.state_dict()[key], value, rtol=1e-4, atol=2e-5, msg=key)

    # The runs did train: the teacher moved well beyond the tolerance, the loss changed.
    initial = torch.load(tmp_path / "step3.pth", weights_only=True)
    final = torch.load(reference / "checkpoint.pth", weights_only=True)
    for part in ("teacher", "student"):
        moved = max((final[part][k] - v).abs().max() for k, v in initial[part].items())
        assert moved > 50 * 2e-5, part
    losses = _losses(reference)
    assert losses[1]["total"] != losses[6]["total"]


def test_optimizer_state_names_round_trip_and_newest_checkpoint(tmp_path: Path):
    import time

    from dinolab.pretrain.train.checkpoint import (
        newest_checkpoint,
        optimizer_parameter_names,
        optimizer_state_by_index,
        optimizer_state_by_name,
    )

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.AdamW([{"params": [model[1].weight, model[0].bias]},
                                   {"params": [model[0].weight], "lr": 0.1}])  # model[1].bias: not optimised
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    names = optimizer_parameter_names(optimizer, model)
    assert names == ["1.weight", "0.bias", "0.weight"]
    by_name = optimizer_state_by_name(optimizer.state_dict(), names)
    assert by_name["param_groups"][1]["params"] == ["0.weight"] and by_name["param_groups"][1]["lr"] == 0.1
    assert torch.equal(by_name["state"]["0.weight"]["exp_avg"], optimizer.state[model[0].weight]["exp_avg"])
    back = optimizer_state_by_index(by_name, names)
    assert back["param_groups"] == optimizer.state_dict()["param_groups"]
    assert back["state"].keys() == optimizer.state_dict()["state"].keys()

    assert newest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoint.dcp").mkdir()
    assert newest_checkpoint(tmp_path) is None  # a folder without DCP metadata is not a checkpoint
    (tmp_path / "checkpoint.pth").write_bytes(b"x")
    assert newest_checkpoint(tmp_path) == tmp_path / "checkpoint.pth"
    time.sleep(0.01)
    (tmp_path / "checkpoint.dcp" / ".metadata").write_bytes(b"x")
    assert newest_checkpoint(tmp_path) == tmp_path / "checkpoint.dcp"
