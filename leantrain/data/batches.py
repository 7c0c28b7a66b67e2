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


class TensorBatches:
    def __init__(
        self, x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool = True, seed: int = 0,
        rank: int = 0, world_size: int = 1,
    ):
        self.x, self.y, self.batch_size, self.shuffle, self.seed = x, y, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        # Every rank gets the same number of samples, so collective steps stay in lock-step.
        self.samples_per_rank = len(x) // world_size if world_size > 1 else len(x)

    def __len__(self) -> int:
        return math.ceil(self.samples_per_rank / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        if self.shuffle:
            order = torch.randperm(len(self.x), generator=epoch_generator(self.seed, epoch))
        else:
            order = torch.arange(len(self.x))
        mine = order[self.rank :: self.world_size][: self.samples_per_rank].to(self.x.device)
        for start in range(0, self.samples_per_rank, self.batch_size):
            index = mine[start : start + self.batch_size]
            yield self.x.index_select(0, index), self.y.index_select(0, index)


class DataLoaderBatches:
    def __init__(self, x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool = True, seed: int = 0):
        self.dataset, self.batch_size, self.shuffle, self.seed = TensorDataset(x, y), batch_size, shuffle, seed
        self.device = x.device

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=self.shuffle, generator=epoch_generator(self.seed, epoch)
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def sequential_batches(x: Tensor, y: Tensor, batch_size: int) -> Iterator[Batch]:
    """In-order slices, for evaluation."""
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]
