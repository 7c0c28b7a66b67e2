"""The in-memory data set every run trains on: train and validation tensors plus what the loop must know."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from leantrain.errors import UsageError


@dataclass
class Dataset:
    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    task: str = "classification"  # a key of leantrain.tasks.TASKS
    num_classes: int | None = None
    info: dict[str, Any] = field(default_factory=dict)  # task-specific facts: vocab size, pad index, ...
    # The user's loss, metrics and output convention (leantrain.train.adapters.TaskAdapter); None: the task's own.
    adapter: Any = field(default=None, compare=False, repr=False)
    # (train, val) leantrain.data.streaming.Stream read batch by batch; the tensors above then hold a first
    # batch of each (for the preflight, the probes and the record's shapes). None: the tensors are the data.
    streams: Any = field(default=None, compare=False, repr=False)

    def __iter__(self) -> Iterator[Tensor]:
        """Unpacks as ``x_train, y_train, x_val, y_val``."""
        return iter((self.x_train, self.y_train, self.x_val, self.y_val))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> Dataset:
        from leantrain.data.streaming import to_device

        moved = {k: to_device(getattr(self, k), torch.device(device)) for k in ("x_train", "y_train", "x_val", "y_val")}
        return Dataset(self.name, **moved, task=self.task, num_classes=self.num_classes, info=dict(self.info),
                       adapter=self.adapter, streams=self.streams)


def split_train_val(x: Tensor, y: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A seeded random split; the first (1 - val_fraction) of a permutation trains."""
    n_train = round(len(x) * (1.0 - val_fraction))
    if not 0 < n_train < len(x):
        raise UsageError(f"val_fraction={val_fraction} of {len(x)} samples leaves an empty split; use a value in (0, 1)")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, val = order[:n_train], order[n_train:]
    return x[train], y[train], x[val], y[val]


def standardize(x_train: Tensor, x_val: Tensor) -> tuple[Tensor, Tensor]:
    """Zero mean, unit variance per feature, with statistics from the training split only."""
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    return (x_train - mean) / std, (x_val - mean) / std
