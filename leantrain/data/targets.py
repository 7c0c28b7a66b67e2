"""The task of a user's data when they did not name one: class labels, unless the targets read as a measured number.

Class labels are 0..C-1 with many samples a class; a measured quantity in whole numbers (a count, an age, a
score such as scikit-learn's diabetes, 214 distinct values 25..346 in 442 rows) takes many values with few samples
each and leaves much of 0..max unused. Taken as labels it trains a classifier of max+1 classes, most never seen,
and scores it by exact hits. So whole-number targets with no task given are refused, in one line naming both
tasks, when they hold more than ``FEW_VALUES`` distinct values and either

- fewer than ``MIN_PER_VALUE`` samples a value on average (AutoGluon's problem-type rule asks about as many), or
- more than ``MAX_UNUSED`` of the labels 0..max unused (or a negative value), where classes would leave few gaps.

Up to ``FEW_VALUES`` distinct values (a label set, a rating scale) stay classes; fractional targets stay refused
under classification (preflight's check names task='regression'); a given task is never second-guessed.
"""
from __future__ import annotations

import torch
from torch import Tensor

from leantrain.errors import UsageError

TASKS = ("classification", "regression")
FEW_VALUES = 20
MIN_PER_VALUE = 10
MAX_UNUSED = 0.10


def check_task(task: str) -> str:
    if task not in TASKS:
        raise UsageError(f"task {task!r} is not one of: {', '.join(TASKS)}")
    return task


def resolve_task(task: str | None, y: Tensor, where: str, quote: str = "'") -> str:
    """``task`` when given; else classification, unless ``y`` reads as a quantity: then one line asking which.
    ``quote``: how the fix is spelled (``'`` for Python keywords, empty for a data spec's options)."""
    if task is not None:
        return check_task(task)
    why = quantity_like(y)
    if why is not None:
        high = int(y.max())
        raise UsageError(f"{where}: the targets are {why}, which reads as a number to predict, not class labels "
                         f"0..C-1; say which: task={quote}regression{quote}, or task={quote}classification{quote} "
                         f"to train {high + 1} classes")
    return "classification"


def quantity_like(y: Tensor) -> str | None:
    """Why whole-number targets ``y`` (shape (N,)) look like a measured quantity rather than class labels, or None."""
    if y.dim() != 1 or y.numel() == 0 or y.is_complex() or (y.is_floating_point() and not _whole(y)):
        return None  # not one label a sample, or fractional: the preflight's checks speak for those
    values = torch.unique(y)
    distinct = len(values)
    if distinct <= FEW_VALUES:
        return None
    low, high = int(values[0]), int(values[-1])
    per_value = len(y) / distinct
    unused = high + 1 - distinct if low >= 0 else None
    described = f"{distinct} distinct whole numbers in {low}..{high}"
    if per_value < MIN_PER_VALUE:
        return f"{described} ({per_value:.1f} samples a value)"
    if unused is None:
        return f"{described} (negative values)"
    if unused > MAX_UNUSED * (high + 1):
        return f"{described} ({unused} of 0..{high} never occur)"
    return None


def _whole(y: Tensor) -> bool:
    return bool(torch.isfinite(y).all()) and bool((y == y.round()).all())
