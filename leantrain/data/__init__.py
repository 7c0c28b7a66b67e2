"""Data sets by name: ``leantrain.data.load("imagenet-sim:n=5000", seed=0)``."""
from __future__ import annotations

from typing import Any

import torch

from leantrain.data.dataset import Dataset, split_train_val
from leantrain.data.registry import DATASETS
from leantrain.registry import call_with_overrides, import_submodules, parse_spec

import_submodules(__name__)  # each reader's file registers its data sets; a new file needs no listing

__all__ = ["DATASETS", "Dataset", "load", "from_tensors"]


def load(spec: str, seed: int = 0, **overrides: Any) -> Dataset:
    """A registered data set by name, with options from the spec (``name:key=value``) and keywords."""
    name, spec_overrides = parse_spec(spec)
    entry = DATASETS.get(name)
    return call_with_overrides("data set", name, entry.builder, {**spec_overrides, **overrides}, seed=seed)


def from_tensors(
    x: torch.Tensor, y: torch.Tensor, *, val_fraction: float = 0.2, seed: int = 0, name: str = "tensors",
    task: str = "classification",
) -> Dataset:
    """Wrap a user's own tensors; a seeded split holds out ``val_fraction`` for validation."""
    num_classes = int(y.max()) + 1 if task == "classification" else None
    return Dataset(name, *split_train_val(x, y, val_fraction, seed), task=task, num_classes=num_classes)
