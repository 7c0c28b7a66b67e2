"""Data read batch by batch from a torch ``Dataset`` as training goes (``from_loader(..., stream=True)``, and
multi-input data): for data larger than memory, or inputs that are tuples or dicts of tensors.

Batches follow the same rules as ``TensorBatches`` (see ``batches.py``): a map-style data set is shuffled each
epoch by a generator seeded with ``(seed, epoch)``, and every rank takes every ``world_size``-th sample of that
order, so the batches are exactly those the in-memory path would draw from the same samples. An iterable data
set streams in its own order; rank r takes every ``world_size``-th batch, and all ranks take the same number.
Validation: each rank evaluates a contiguous share (map-style) or every ``world_size``-th batch (iterable), and
the loop adds up the sums.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from itertools import islice
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from leantrain.data.batches import epoch_generator, rank_slice, say_if_batch_outgrows_share


def to_device(value: Any, device: torch.device) -> Any:
    """A batch's inputs on the device: a tensor, or a tuple/list/dict of them."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


def head(value: Any, n: int) -> Any:
    """The first ``n`` samples of inputs that are a tensor or a tuple/list/dict of them."""
    if isinstance(value, torch.Tensor):
        return value[:n]
    if isinstance(value, Mapping):
        return {k: head(v, n) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(head(v, n) for v in value)
    return value


def is_iterable(dataset: Any) -> bool:
    return isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__")


class Stream:
    """A torch data set of (x, y) pairs and how to collate them (a user's DataLoader gives its collate_fn and
    num_workers; leantrain chooses the batch size, the order and the sharding)."""

    def __init__(self, dataset: Any, collate_fn: Callable[..., Any] | None = None, num_workers: int = 0):
        self.dataset, self.collate_fn, self.num_workers = dataset, collate_fn, num_workers
        self._batches_counted: dict[int, int] = {}

    @property
    def iterable(self) -> bool:
        return is_iterable(self.dataset)

    def __len__(self) -> int:
        """Samples; an iterable data set without ``__len__`` is counted once, by reading it."""
        try:
            return len(self.dataset)
        except TypeError:
            return sum(len(batch[1]) for batch in self.loader(1024))

    def loader(self, batch_size: int, sampler: Any = None) -> DataLoader:
        return DataLoader(self.dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                          collate_fn=self.collate_fn, num_workers=self.num_workers)

    def count_batches(self, batch_size: int) -> int:
        if batch_size not in self._batches_counted:
            try:
                self._batches_counted[batch_size] = math.ceil(len(self.dataset) / batch_size)
            except TypeError:
                self._batches_counted[batch_size] = sum(1 for _ in self.loader(batch_size))
        return self._batches_counted[batch_size]


class StreamBatches:
    """A BatchSource over a Stream: batches read as training goes, moved to ``device``."""

    def __init__(self, stream: Stream, batch_size: int, device: torch.device, *, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.stream, self.batch_size, self.device, self.shuffle, self.seed = stream, batch_size, device, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.figures: dict[str, float] = {}
        if not stream.iterable:  # an iterable one is counted only by reading it through
            say_if_batch_outgrows_share(batch_size, len(stream), world_size, rank)

    def __len__(self) -> int:
        if self.stream.iterable:
            return self.stream.count_batches(self.batch_size) // self.world_size
        return math.ceil(len(self.stream) // self.world_size / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[Any, torch.Tensor]]:
        if self.stream.iterable:
            batches = islice(self.stream.loader(self.batch_size), self.rank, None, self.world_size)
            yield from ((to_device(x, self.device), y.to(self.device)) for x, y in islice(batches, len(self)))
            return
        n = len(self.stream)
        order = torch.randperm(n, generator=epoch_generator(self.seed, epoch)) if self.shuffle else torch.arange(n)
        mine = rank_slice(order, self.rank, self.world_size, n // self.world_size).tolist()
        for x, y in self.stream.loader(self.batch_size, sampler=mine):
            yield to_device(x, self.device), y.to(self.device)


class StreamVal:
    """Validation batches over a Stream, this rank's share."""

    def __init__(self, stream: Stream, device: torch.device):
        self.stream, self.device = stream, device

    def __len__(self) -> int:
        return len(self.stream)

    def batches(self, batch_size: int, rank: int, world_size: int) -> Iterator[tuple[Any, torch.Tensor]]:
        if self.stream.iterable:
            chosen: Any = islice(self.stream.loader(batch_size), rank, None, world_size)
        else:
            share = math.ceil(len(self.stream) / world_size)
            chosen = self.stream.loader(batch_size, sampler=range(rank * share, min(len(self.stream), (rank + 1) * share)))
        for x, y in chosen:
            yield to_device(x, self.device), y.to(self.device)
