"""Minimal process-group helpers: single process by default, ``torchrun`` when its variables are set.

Example::

    init_from_env()          # no-op without torchrun
    loss = all_reduce_mean(loss.detach())
"""

from __future__ import annotations

import os

import torch
from torch import Tensor
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    """True when ``torchrun`` (or an equivalent launcher) set ``RANK`` and ``WORLD_SIZE``."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env() -> bool:
    """Join the process group described by the torchrun variables; returns whether one is active."""
    if is_distributed():
        return True
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) < 2:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over all processes (the tensor itself when single-process)."""
    if not is_distributed():
        return tensor
    reduced = tensor.clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / world_size()


def barrier() -> None:
    if is_distributed():
        dist.barrier()
