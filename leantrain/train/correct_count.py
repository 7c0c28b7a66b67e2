"""The training-accuracy count of one epoch on one rank: correct units, counted on the training forward passes
already made (the task's ``correct``), kept on the device and read once, at the epoch's end or a checkpoint.

A classifier's count is three small kernels a step (argmax, compare, sum): at a small model's step (~0.8 ms on a
CPU) they were the loop's largest own cost (``benchmarks/framework_cost.py --in-situ``). Where the task names its
predictions (``predictions``: its count is ``(predictions(output) == target).sum()``), a step makes only them;
they and the targets (one value a sample) are compared and summed together every ``KEEP_BATCHES`` micro-batches:
the same number from one kernel a step and three every ``KEEP_BATCHES``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

KEEP_BATCHES = 64  # micro-batches whose predictions are kept before they are compared and summed together


class CorrectCount:
    """Correct training units so far in the epoch: ``before`` (the part a resumed epoch ran elsewhere), device
    scalars already counted, and predictions not yet compared. ``mark``/``drop_since`` leave a skipped step out;
    kept predictions are compared only between steps (``step_done``), so a step's part is always droppable."""

    def __init__(self, task: Any, before: Tensor | None = None):
        self.task = task
        self.before = before
        self.counts: list[Tensor] = []
        self.kept: list[tuple[Tensor, Tensor]] = []  # (predictions, targets) not yet compared
        self._predictions = getattr(task, "predictions", None)

    def add(self, output: Any, target: Tensor) -> None:
        """One micro-batch's training output (with its graph: predictions build none) and target."""
        if self._predictions is not None:
            self.kept.append((self._predictions(output), target))
        else:
            self.add_count(self.task.correct(output, target))

    def add_count(self, counted: Tensor | None) -> None:
        """A count made elsewhere (a pipeline's last stage); None where the task counts none."""
        if counted is not None:
            self.counts.append(counted)

    def mark(self) -> tuple[int, int]:
        return len(self.counts), len(self.kept)

    def drop_since(self, mark: tuple[int, int]) -> None:
        """Leave out what was added since ``mark`` (a step skip mode leaves out)."""
        counts, kept = mark
        del self.counts[counts:]
        del self.kept[kept:]

    def step_done(self) -> None:
        if len(self.kept) >= KEEP_BATCHES:
            self._compare_kept()

    def total(self) -> Tensor | None:
        """The count so far, a device scalar (None where the task counts none); read between steps."""
        self._compare_kept()
        total = torch.stack(self.counts).sum() if self.counts else None  # one kernel, when read
        if self.before is None:
            return total
        return self.before if total is None else total + self.before

    def _compare_kept(self) -> None:
        if not self.kept:
            return
        predictions = torch.cat([p for p, _ in self.kept]) if len(self.kept) > 1 else self.kept[0][0]
        targets = torch.cat([t for _, t in self.kept]) if len(self.kept) > 1 else self.kept[0][1]
        self.kept = []
        self.counts.append(predictions.eq_(targets).sum())  # the predictions are ours: compared in place
