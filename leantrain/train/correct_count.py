"""The training-accuracy count of one epoch on one rank: correct units, counted on the training forward passes
already made (the task's ``correct``), kept on the device and read once, at the epoch's end or a checkpoint.

A classifier's count is three small kernels a step (argmax, compare, sum): at a small model's step (~0.8 ms on a
CPU) they were the loop's largest own cost (``benchmarks/framework_cost.py --in-situ``). Where the task names its
predictions (``predictions``: its count is ``(predictions(output) == target).sum()``), a step makes only them;
they and the targets (one value a sample) are compared and summed together every ``KEEP_BATCHES`` micro-batches:
the same number from one kernel a step and three every ``KEEP_BATCHES``. On the CPU, while the kept outputs fit in
``KEEP_OUTPUT_BYTES``, a step keeps its output itself (detached: the same memory, no kernel) and the predictions of
all of them are made in one argmax: no kernel a step. Only a plain tensor the forward pass made afresh is kept so: a
view (of a weight, say, or of a larger tensor) could change, or hold more memory, before it is read.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

KEEP_BATCHES = 64  # micro-batches whose predictions are kept before they are compared and summed together
# Most memory the kept outputs may hold together (20 classes at batch 512: 2.5 MiB for KEEP_BATCHES of them); an
# output past it (1000 classes at 64 rows would need 16 MiB) gives its predictions at once, its argmax a small part
# of its step.
# Only on the CPU: a CUDA graph (compile's reduce-overhead) may reuse an output's memory for the next step, and a
# CUDA step's argmax is an asynchronous launch the step does not wait for.
KEEP_OUTPUT_BYTES = 4 << 20


class CorrectCount:
    """Correct training units so far in the epoch: ``before`` (the part a resumed epoch ran elsewhere), device
    scalars already counted, and predictions not yet compared. ``mark``/``drop_since`` leave a skipped step out;
    kept predictions are compared only between steps (``step_done``), so a step's part is always droppable."""

    def __init__(self, task: Any, before: Tensor | None = None):
        self.task = task
        self.before = before
        self.counts: list[Tensor] = []
        self.kept: list[tuple[Tensor, Tensor]] = []  # (predictions, targets) not yet compared
        self.kept_outputs: list[tuple[Tensor, Tensor]] = []  # (detached outputs, targets) not yet predicted
        self._kept_bytes = 0  # the kept outputs' memory
        self._predictions = getattr(task, "predictions", None)

    def add(self, output: Any, target: Tensor) -> None:
        """One micro-batch's training output (with its graph: predictions build none) and target."""
        if self._predictions is None:
            self.add_count(self.task.correct(output, target))
        elif self._reserve(output):
            self.kept_outputs.append((output.detach(), target))
        else:
            self.kept.append((self._predictions(output), target))

    def _reserve(self, output: Any) -> bool:
        """Whether the output may be kept as it is (a plain CPU tensor the forward pass made, not a view, within
        the memory bound); if so its memory is counted as kept."""
        if type(output) is not Tensor or not output.is_cpu or output._is_view():
            return False
        size = output.untyped_storage().nbytes()
        if self._kept_bytes + size > KEEP_OUTPUT_BYTES:
            return False
        self._kept_bytes += size
        return True

    def add_count(self, counted: Tensor | None) -> None:
        """A count made elsewhere (a pipeline's last stage); None where the task counts none."""
        if counted is not None:
            self.counts.append(counted)

    def mark(self) -> tuple[int, int, int]:
        return len(self.counts), len(self.kept), len(self.kept_outputs)

    def drop_since(self, mark: tuple[int, int, int]) -> None:
        """Leave out what was added since ``mark`` (a step skip mode leaves out)."""
        counts, kept, kept_outputs = mark
        del self.counts[counts:]
        del self.kept[kept:]
        del self.kept_outputs[kept_outputs:]
        self._kept_bytes = sum(o.untyped_storage().nbytes() for o, _ in self.kept_outputs)

    def step_done(self) -> None:
        if len(self.kept) + len(self.kept_outputs) >= KEEP_BATCHES:
            self._compare_kept()

    def total(self) -> Tensor | None:
        """The count so far, a device scalar (None where the task counts none); read between steps."""
        self._compare_kept()
        total = torch.stack(self.counts).sum() if self.counts else None  # one kernel, when read
        if self.before is None:
            return total
        return self.before if total is None else total + self.before

    def _compare_kept(self) -> None:
        if self.kept_outputs:
            assert self._predictions is not None  # outputs are kept only where the task names its predictions
            self.kept.append((self._predictions(_cat([o for o, _ in self.kept_outputs])),
                              _cat([t for _, t in self.kept_outputs])))
            self.kept_outputs, self._kept_bytes = [], 0
        if not self.kept:
            return
        predictions, targets = _cat([p for p, _ in self.kept]), _cat([t for _, t in self.kept])
        self.kept = []
        self.counts.append((predictions == targets).sum())  # not in place: a task's predictions may be its output


def _cat(tensors: list[Tensor]) -> Tensor:
    return torch.cat(tensors) if len(tensors) > 1 else tensors[0]
