"""Random access to a sample's image bytes by its number, over the shards of a :class:`ShardList`, and
the order samples are read in (:func:`windowed_order`)."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from itertools import accumulate
from typing import Any

import torch
from torch import Tensor

from dinolab.core import storage
from dinolab.core.storage import RemotePath
from dinolab.pretrain.data.shards.specs import ShardList, first_line
from dinolab.pretrain.data.shards.tar import TarSample, group_samples, index_tar, read_tar_members

SHARDS_PER_WINDOW = 16
"""Shards whose samples are mixed together in :func:`windowed_order` (all of them when there are fewer)."""


class SampleReadError(Exception):
    """One sample whose image bytes cannot be read; ``name`` and ``reason`` say which and why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason

    def __reduce__(self) -> tuple:  # picklable across DataLoader workers
        return (type(self), (self.name, self.reason))



class ShardReader:
    """Image bytes of sample ``i`` of a :class:`ShardList`, by offset (picklable: each process opens
    and indexes the shards it touches, keeping the ``open_shards`` most recent ones open).

    Headers are indexed through a memory map that is closed straight after; sample bytes are read with
    ``os.pread``, so an I/O error or a file cut short under a running job is a skipped sample, not a
    SIGBUS. A remote shard (reached with ``storage_options``) is fetched whole when first touched and
    indexed from memory; its bytes stay while reads stay on it, and a later read of it once they are let
    go is one ranged read (:func:`core.storage.read_bytes`).
    """

    def __init__(self, shards: ShardList, open_shards: int = 32,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        self.shards = shards
        self.open_shards = open_shards
        self.storage_options = dict(storage_options or {})
        self._open: OrderedDict[int, tuple[int | None, list[TarSample], str | None]] = OrderedDict()
        self._held: tuple[int, bytes] | None = None  # the remote shard whose bytes are in memory

    def __len__(self) -> int:
        return self.shards.num_samples

    def __getstate__(self) -> dict:
        return {"shards": self.shards, "open_shards": self.open_shards, "storage_options": self.storage_options}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["shards"], state["open_shards"], state.get("storage_options"))

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        for fd, _, _ in getattr(self, "_open", {}).values():
            if fd is not None:
                os.close(fd)
        self._open = OrderedDict()

    def _shard(self, number: int) -> tuple[int | None, list[TarSample], str | None]:
        if number in self._open:
            self._open.move_to_end(number)
            return self._open[number]
        path = self.shards.shards[number].path
        try:
            if isinstance(path, str):
                fd, (samples, problem) = None, self._fetch(number, path)
            else:
                fd = os.open(path, os.O_RDONLY)
                samples, problem = index_tar(path)
        except Exception as error:  # noqa: BLE001 - OSError, ValueError, or the store's own errors
            entry: tuple[int | None, list[TarSample], str | None] = (
                None, [], f"unreadable shard ({getattr(error, 'strerror', None) or error})")
        else:
            entry = (fd, samples, problem)  # members before any damage are whole
        self._open[number] = entry
        while len(self._open) > self.open_shards:
            old_fd = self._open.popitem(last=False)[1][0]
            if old_fd is not None:
                os.close(old_fd)
        return entry

    def _fetch(self, number: int, url: str) -> tuple[list[TarSample], str | None]:
        """Fetch remote shard ``number`` whole, hold its bytes and index them."""
        self._held = None
        data = storage.read_bytes(RemotePath(str(url), self.storage_options))
        self._held = (number, data)
        members, problem = read_tar_members(data)
        return group_samples(members), problem

    def _remote_bytes(self, number: int, sample: TarSample) -> bytes:
        if self._held is not None and self._held[0] == number:
            return self._held[1][sample.offset : sample.offset + sample.size]
        url = self.shards.shards[number].path
        return storage.read_bytes(RemotePath(str(url), self.storage_options), sample.offset, sample.offset + sample.size)

    def read(self, index: int) -> tuple[str, bytes]:
        """``(name, image bytes)`` of sample ``index``; :class:`SampleReadError` when they cannot be read."""
        number, position = self.shards.locate(index)
        fd, samples, problem = self._shard(number)
        shard = self.shards.shards[number]
        if position >= len(samples):
            reason = problem or f"the shard holds {len(samples)} samples, its index says {shard.nsamples}"
            raise SampleReadError(f"{shard.name}#{position}", reason)
        sample = samples[position]
        if sample.member is None:
            raise SampleReadError(f"{shard.name}/{sample.key}", "sample has no image member")
        name = f"{shard.name}/{sample.member}"
        try:
            if shard.remote:
                data = self._remote_bytes(number, sample)
            else:
                data = os.pread(fd, sample.size, sample.offset)  # type: ignore[arg-type]
        except OSError as error:
            raise SampleReadError(name, f"unreadable ({error.strerror or error})") from None
        except Exception as error:  # noqa: BLE001 - a store's own errors (refused, throttled)
            raise SampleReadError(name, f"unreadable ({type(error).__name__}: {first_line(error)})") from None
        if len(data) != sample.size:
            raise SampleReadError(name, f"short read ({len(data)} of {sample.size} bytes)")
        return name, data


def windowed_order(counts: list[int], seed: int, epoch: int, shards_per_window: int = SHARDS_PER_WINDOW) -> Tensor:
    """A permutation of all ``sum(counts)`` samples fixed by ``(seed, epoch)``, with locality.

    The shards are shuffled and cut into windows of ``shards_per_window``; each window's samples are
    shuffled together and the windows follow one another. Consecutive batches (and so every rank and
    DataLoader worker at one time) read from at most two windows' shards. With no more shards than one
    window it is exactly ``torch.randperm(n)`` of the same generator — the order of the in-memory and
    folder sources.
    """
    if shards_per_window < 1:
        raise ValueError(f"shards_per_window must be positive, got {shards_per_window}")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    total = sum(counts)
    if len(counts) <= shards_per_window:
        return torch.randperm(total, generator=generator)
    starts = [0, *accumulate(counts)][:-1]
    shard_order = torch.randperm(len(counts), generator=generator).tolist()
    pieces = []
    for first in range(0, len(shard_order), shards_per_window):
        window = shard_order[first : first + shards_per_window]
        members = torch.cat([torch.arange(starts[s], starts[s] + counts[s]) for s in window])
        pieces.append(members[torch.randperm(len(members), generator=generator)])
    return torch.cat(pieces)

