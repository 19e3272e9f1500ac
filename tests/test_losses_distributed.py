"""Sinkhorn-Knopp and centre updates over 2 gloo processes equal the single-process result on the whole batch."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dinolab.pretrain.train.losses import DINOLoss, sinkhorn_knopp


def _worker(rank: int, world_size: int, init_file: str, logits: torch.Tensor, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        shard = logits.chunk(world_size)[rank]
        q = sinkhorn_knopp(shard, teacher_temp=0.1, n_iterations=3)
        loss = DINOLoss(logits.shape[1])
        loss.update_center(shard)
        torch.save({"q": q, "center": loss.center}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns two processes (~10 s of start-up on 2 cores)
def test_sinkhorn_and_center_are_global_under_distributed():
    logits = torch.randn(10, 6)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), logits, tmp), nprocs=2, join=True)
        results = [torch.load(os.path.join(tmp, f"{r}.pt"), weights_only=True) for r in range(2)]
    torch.testing.assert_close(torch.cat([r["q"] for r in results]), sinkhorn_knopp(logits, 0.1, 3))
    reference = DINOLoss(6)
    reference.update_center(logits)
    for r in results:
        torch.testing.assert_close(r["center"], reference.center)
