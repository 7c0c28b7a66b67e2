"""Whether a torch ``Dataset`` gives the same item each time it is read.

A random augmentation (a torchvision transform, noise added in ``__getitem__``) draws anew on every read: read
once into memory, the first draw would be frozen for every epoch. ``changes_between_reads`` reads a few items
twice and compares them, with the caller's random streams (torch, ``random``, numpy) put back afterwards, so that
looking does not change what the run draws later.
"""
from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from leantrain.data.streaming import is_iterable

# Items read twice: a transform that changes an item half the time (a random flip) goes unseen with odds 1 in 2^8.
PROBE_ITEMS = 8


def changes_between_reads(dataset: Any) -> int | None:
    """The index of the first probed item that reads differently the second time; None when every probed item
    read the same (or the data set cannot be indexed: an iterable one is read in its own order, once an epoch)."""
    if is_iterable(dataset):
        return None
    with _random_state_kept():
        for index in range(min(PROBE_ITEMS, len(dataset))):
            if not same(dataset[index], dataset[index]):
                return index
    return None


def same(a: Any, b: Any) -> bool:
    """Equal items: tensors and arrays element by element (NaN equal to NaN), containers part by part."""
    if isinstance(a, np.ndarray) and a.dtype.kind in "biufc":
        a = torch.from_numpy(a)
    if isinstance(b, np.ndarray) and b.dtype.kind in "biufc":
        b = torch.from_numpy(b)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and _same_tensor(a, b)
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # an object without a plain equality (a PIL image compares fine)
        return a is b


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


@contextmanager
def _random_state_kept() -> Iterator[None]:
    python, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy_state)
