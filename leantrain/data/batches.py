"""Mini-batch sources for the loop.

``TensorBatches`` is leantrain's: the tensors stay on the device and each batch is one ``index_select``
of a per-epoch permutation, with no per-sample Python work. ``DataLoaderBatches`` is the seeds' recipe,
``DataLoader(TensorDataset(x, y), batch_size, shuffle=True)``, kept as the honest baseline.

Both draw epoch ``e``'s order from a generator seeded by ``(seed, e)``, so a run resumed at epoch ``e``
sees exactly the batches the uninterrupted run saw.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

Batch = tuple[Tensor, Tensor]


class BatchSource(Protocol):
    batch_size: int

    def __len__(self) -> int: ...

    def epoch(self, epoch: int) -> Iterator[Batch]: ...


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def rank_slice(order: Tensor, rank: int, world_size: int, samples_per_rank: int) -> Tensor:
    """Rank ``rank``'s indices: every ``world_size``-th of the shared order, so that batch k of all ranks
    together is batch k of one process with ``world_size`` times the batch. The last ``len % world_size``
    samples of the order are dropped (at most world_size - 1 per epoch), so every rank takes the same
    number of steps and no collective waits on a rank that has run out."""
    return order[rank::world_size][:samples_per_rank]


class TensorBatches:
    def __init__(
        self, x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool = True, seed: int = 0,
        rank: int = 0, world_size: int = 1,
    ):
        self.x, self.y, self.batch_size, self.shuffle, self.seed = x, y, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.samples_per_rank = len(x) // world_size

    def __len__(self) -> int:
        return math.ceil(self.samples_per_rank / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        if self.shuffle:
            order = torch.randperm(len(self.x), generator=epoch_generator(self.seed, epoch))
        else:
            order = torch.arange(len(self.x))
        mine = rank_slice(order, self.rank, self.world_size, self.samples_per_rank).to(self.x.device)
        for start in range(0, self.samples_per_rank, self.batch_size):
            index = mine[start : start + self.batch_size]
            yield self.x.index_select(0, index), self.y.index_select(0, index)


class DataLoaderBatches:
    """The seeds' DataLoader; on several ranks it reads this rank's slice of the same shuffled order."""

    def __init__(
        self, x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool = True, seed: int = 0,
        rank: int = 0, world_size: int = 1,
    ):
        self.dataset, self.batch_size, self.shuffle, self.seed = TensorDataset(x, y), batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.samples_per_rank = len(x) // world_size
        self.device = x.device

    def __len__(self) -> int:
        return math.ceil(self.samples_per_rank / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        generator = epoch_generator(self.seed, epoch)
        if self.world_size == 1:  # exactly the seeds' recipe
            loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=self.shuffle, generator=generator)
        else:
            n = len(self.dataset)
            order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
            mine = rank_slice(order, self.rank, self.world_size, self.samples_per_rank).tolist()
            loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=mine)
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def sequential_batches(x: Tensor, y: Tensor, batch_size: int) -> Iterator[Batch]:
    """In-order slices, for evaluation."""
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]
