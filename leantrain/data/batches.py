"""Mini-batch sources for the loop.

``TensorBatches`` is leantrain's: the tensors stay on the device and each batch is one ``index_select``
of a per-epoch permutation, with no per-sample Python work. ``DataLoaderBatches`` is the seeds' recipe,
``DataLoader(TensorDataset(x, y), batch_size, shuffle=True)``, kept as the honest baseline.

Both draw epoch ``e``'s order from a generator seeded by ``(seed, e)``, so a run resumed at epoch ``e``
sees exactly the batches the uninterrupted run saw.

``TensorBatches(..., pad_index=P)`` trims each batch of padded token sequences to its longest sample: the same
batches, without the padding columns every row of the batch has; where the model masks padding (attention masks,
``ignore_index``: its ``padding_invariant``), the losses are unchanged. With ``buckets=True`` it also batches them by length: within
windows of ``BUCKET_WINDOW`` global batches of the shuffled order, samples are sorted by length and cut into
batches, and the batches are shuffled. A short-line batch then costs what its lines cost, not what the longest
line of the data set costs.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from leantrain.errors import UsageError

Batch = tuple[Tensor, Tensor]


class BatchSource(Protocol):
    batch_size: int
    figures: dict[str, float]  # what the source measured of its last epoch, for the epoch's record

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


def batch_too_large(batch_size: int, samples: int, world_size: int = 1) -> str | None:
    """What a batch larger than a rank's share of the training split does, in one line; None when it fits. Such a
    batch is not an error (full-batch training is a choice) but never silent: the issue's batch_size=100000 on
    1,437 samples trained one step an epoch to val_acc 0.11 with no word."""
    share = samples // world_size
    if not 0 < share < batch_size:
        return None
    if world_size == 1:
        held, per = f"the training split ({samples} samples)", ""
    else:
        held, per = f"a worker's share of the training split ({share} of {samples} samples, over {world_size} workers)", \
            " (per worker)"
    return (f"batch_size {batch_size}{per} is larger than {held}: every epoch is a single step of {share}; use "
            f"batch_size {share} or less for more steps an epoch")


def say_if_batch_outgrows_share(batch_size: int, samples: int, world_size: int, rank: int) -> None:
    """Rank 0 says when the batch outgrows each rank's share but not the whole split (the preflight, which knows
    only the split, said that case)."""
    message = batch_too_large(batch_size, samples, world_size)
    if message and rank == 0 and batch_size <= samples:
        print(f"leantrain: warning: {message}", file=sys.stderr, flush=True)


BUCKET_WINDOW = 64  # global batches sorted together: wide enough to group lengths, narrow enough to stay random


def bucket_pad_index(dataset: Any, setting: str = "length_buckets") -> int:
    """The pad index that length buckets and trimming trim, or one line saying why ``setting`` cannot apply."""
    if dataset.streams is not None or "pad_index" not in dataset.info or dataset.x_train.is_floating_point() \
            or dataset.x_train.dim() != 2 or dataset.y_train.dim() != 2:
        raise UsageError(f"{setting} needs padded token sequences held in memory (seq2seq data such as "
                         f"polynomial); data {dataset.name} has none")
    return int(dataset.info["pad_index"])


def padded_lengths(tokens: Tensor, pad_index: int) -> Tensor:
    """Per row, the position after its last non-pad token (0 for an all-pad row), on the CPU."""
    tokens = tokens.cpu()
    positions = torch.arange(1, tokens.shape[1] + 1)
    return ((tokens != pad_index) * positions).amax(dim=1)


def expected_padding_trimmed(x: Tensor, y: Tensor, pad_index: int, batch_size: int) -> float:
    """The share of the padded positions that trimming random batches of ``batch_size`` rows would cut, expected
    from the rows' lengths (a batch keeps its longest row's width: E[max] over draws from the lengths' distribution)."""
    def expected_width(tokens: Tensor) -> float:
        lengths = padded_lengths(tokens, pad_index)
        below = torch.bincount(lengths, minlength=tokens.shape[1] + 1).cumsum(0).double() / len(lengths)
        return float((1.0 - below[:-1] ** batch_size).sum())  # sum over l >= 1 of P(max >= l)

    if not len(x):
        return 0.0
    return 1.0 - (expected_width(x) + expected_width(y)) / (x.shape[1] + y.shape[1])


class TensorBatches:
    def __init__(
        self, x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool = True, seed: int = 0,
        rank: int = 0, world_size: int = 1, pad_index: int | None = None, buckets: bool = False,
    ):
        if buckets and pad_index is None:
            raise ValueError("length buckets need the pad_index of the sequences they sort")
        self.x, self.y, self.batch_size, self.shuffle, self.seed = x, y, batch_size, shuffle, seed
        self.rank, self.world_size, self.buckets = rank, world_size, buckets
        say_if_batch_outgrows_share(batch_size, len(x), world_size, rank)
        self.samples_per_rank = len(x) // world_size
        self.figures: dict[str, float] = {}
        self.lengths: tuple[Tensor, Tensor] | None = None
        if pad_index is not None:
            self.lengths = padded_lengths(x, pad_index), padded_lengths(y, pad_index)

    def __len__(self) -> int:
        return math.ceil(self.samples_per_rank / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        generator = epoch_generator(self.seed, epoch)
        order = torch.randperm(len(self.x), generator=generator) if self.shuffle else torch.arange(len(self.x))
        if self.buckets:
            order = self._bucketed(order, generator)
        mine_cpu = rank_slice(order, self.rank, self.world_size, self.samples_per_rank)
        mine = mine_cpu.to(self.x.device)
        kept = 0  # token positions the trimmed batches hold
        for start in range(0, self.samples_per_rank, self.batch_size):
            index = mine[start : start + self.batch_size]
            x, y = self.x.index_select(0, index), self.y.index_select(0, index)
            if self.lengths is not None:  # trim the padding every row of the batch has
                rows = mine_cpu[start : start + self.batch_size]
                x, y = x[:, : int(self.lengths[0][rows].max())], y[:, : int(self.lengths[1][rows].max())]
                kept += x.numel() + y.numel()
            yield x, y
        if self.lengths is not None and self.samples_per_rank:  # the effect, for the record: 0.0 saved nothing
            padded = self.samples_per_rank * (self.x.shape[1] + self.y.shape[1])
            self.figures = {"padding_trimmed": 1.0 - kept / padded}

    def _bucketed(self, order: Tensor, generator: torch.Generator) -> Tensor:
        """``order`` regrouped so that each global batch holds samples of similar length, in a random
        batch order; the partial global batch, if any, stays last. Still one permutation of the samples."""
        assert self.lengths is not None
        global_batch = self.batch_size * self.world_size
        full = len(order) // global_batch * global_batch
        # Sort key: target length first (the decoder's steps), then source length; stable, so ties stay shuffled.
        key = self.lengths[1] * (int(self.lengths[0].max()) + 1) + self.lengths[0]
        window = global_batch * BUCKET_WINDOW
        pieces = []
        for start in range(0, full, window):
            chunk = order[start : min(start + window, full)]
            pieces.append(chunk[torch.argsort(key[chunk], stable=True)])
        batches = torch.cat(pieces).view(-1, global_batch) if pieces else order[:0].view(0, global_batch)
        batches = batches[torch.randperm(len(batches), generator=generator)]
        return torch.cat([batches.flatten(), order[full:]])


class DataLoaderBatches:
    """The seeds' DataLoader; on several ranks it reads this rank's slice of the same shuffled order."""

    def __init__(
        self, x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool = True, seed: int = 0,
        rank: int = 0, world_size: int = 1,
    ):
        self.dataset, self.batch_size, self.shuffle, self.seed = TensorDataset(x, y), batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        say_if_batch_outgrows_share(batch_size, len(x), world_size, rank)
        self.samples_per_rank = len(x) // world_size
        self.device = x.device
        self.figures: dict[str, float] = {}

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
