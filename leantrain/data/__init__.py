"""Data sets by name: ``leantrain.data.load("imagenet-sim:n=5000", seed=0)``."""
from __future__ import annotations

from typing import Any

from leantrain.data.dataset import Dataset
from leantrain.data.registry import DATASETS
from leantrain.data.user import loader_dataset, tensors_dataset
from leantrain.registry import call_with_overrides, import_submodules, parse_spec

import_submodules(__name__)  # each reader's file registers its data sets; a new file needs no listing

__all__ = ["DATASETS", "Dataset", "load", "from_tensors", "from_loader"]


def load(spec: str, seed: int = 0, **overrides: Any) -> Dataset:
    """A registered data set by name, with options from the spec (``name:key=value``) and keywords."""
    name, spec_overrides = parse_spec(spec)
    entry = DATASETS.get(name)
    return call_with_overrides("data set", name, entry.builder, {**spec_overrides, **overrides}, seed=seed)


def from_tensors(
    x: Any, y: Any, *, val: tuple[Any, Any] | None = None, val_fraction: float = 0.2, seed: int = 0,
    name: str = "tensors", task: str | None = None,
) -> Dataset:
    """Wrap a user's own tensors or numpy arrays; a seeded split holds out ``val_fraction`` for validation
    unless ``val=(x_val, y_val)`` is given. ``x`` may be a tuple or dict of tensors: a model with several
    inputs, called as ``model(*x)`` or ``model(**x)``. ``task``: "classification" (integer labels 0..C-1, shape (N,)) or
    "regression" (float targets, the model's output shape per sample); not given, classification, unless integer
    targets read as a quantity (more than 20 distinct values with few samples each or a sparse range: one line
    asks which, ``leantrain/data/targets.py``)."""
    return tensors_dataset(x, y, val=val, val_fraction=val_fraction, seed=seed, name=name, task=task)


def from_loader(
    train: Any, val: Any = None, *, val_fraction: float = 0.2, seed: int = 0, name: str = "loader",
    task: str | None = None, stream: bool | None = None,
) -> Dataset:
    """A torch ``DataLoader`` or map-style/iterable ``Dataset`` of (x, y) pairs (``val``: another one, else a
    seeded split of a map-style one); x a tensor, or a tuple or dict of them (``model(*x)``, ``model(**x)``).
    leantrain batches them its own way (``batch_size=``, shuffled by the run's seed, sharded per rank under data
    parallelism), taking a DataLoader's data set, collate_fn and num_workers. By default the samples are read once
    into memory (the fast path), unless a few items read twice come back different (a random augmentation): then
    they are streamed, with a warning, so each epoch draws new samples. ``stream=True`` reads batches as training
    goes, for data larger than memory (an iterable data set streams in its own order); ``stream=False`` reads into
    memory whatever the items do. ``task`` as for ``from_tensors`` (streamed: classification unless given)."""
    return loader_dataset(train, val, val_fraction=val_fraction, seed=seed, name=name, task=task, stream=stream)
