"""A distributed sampler that resumes exactly, also at a different world size.

Every epoch has one global order: a permutation of the ``N`` items drawn from ``(seed, epoch)``. Ranks
read that order round-robin (rank ``r`` takes positions ``r, r + W, r + 2W, ...``), so the ``k``-th
per-rank batches of all ranks together are the ``k``-th global batch ``order[k·G : (k+1)·G]`` with
``G = W · per_rank_batch``, whatever ``W`` is. The state is the epoch and the GLOBAL number of items
consumed in it; after ``load_state_dict`` the order continues from there, so a run saved on 2 ranks
resumes on 1 (or the reverse) with the same sequence of global batches.

The sampler cannot see what a data loader has consumed (loaders prefetch), so the training loop calls
:meth:`advance` with the global batch size after each optimisation step.

Example::

    sampler = ResumableDistributedSampler(len(dataset), rank=rank, world_size=world, seed=0)
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, drop_last=True)
    for images in loader:
        ...; sampler.advance(per_rank * world)
    state = sampler.state_dict()  # {"epoch": e, "consumed": n, "seed": s, "num_items": N}
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler


class ResumableDistributedSampler(Sampler[int]):
    """Per-rank indices of a seeded per-epoch permutation, resumable by global item count."""

    def __init__(
        self, num_items: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True
    ) -> None:
        if num_items <= 0:
            raise ValueError(f"the sampler needs at least one item, got {num_items}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of size {world_size}")
        self.num_items = num_items
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.consumed = 0  # global items of this epoch already used for training

    def global_order(self) -> torch.Tensor:
        """The epoch's order of all items (identical on every rank and world size)."""
        if not self.shuffle:
            return torch.arange(self.num_items)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_items, generator=generator)

    def _remaining(self) -> int:
        """Remaining global items, cut to a multiple of the world size so ranks stay in step."""
        remaining = max(self.num_items - self.consumed, 0)
        return remaining - remaining % self.world_size

    def __iter__(self) -> Iterator[int]:
        start = self.consumed
        order = self.global_order()[start : start + self._remaining()]
        return iter(order[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self._remaining() // self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning (call before iterating each new epoch)."""
        self.epoch = epoch
        self.consumed = 0

    def advance(self, global_items: int) -> None:
        """Record that ``global_items`` items (summed over ranks) were consumed by training."""
        self.consumed += global_items

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "seed": self.seed,
            "num_items": self.num_items,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from a state saved at any world size; the data set and seed must match."""
        for key in ("seed", "num_items", "shuffle"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state was saved with {key}={state[key]!r}, this run has {getattr(self, key)!r}"
                )
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])
