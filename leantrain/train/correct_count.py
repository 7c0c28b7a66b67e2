"""The training-accuracy count of one epoch on one rank: correct units, counted on the training forward passes
already made (the task's ``correct``), kept on the device and read once, at the epoch's end or a checkpoint.

A classifier's count is three small kernels (argmax, compare, sum): at a small model's step (~0.8 ms on a CPU) made
each step they were the loop's largest own cost (``benchmarks/framework_cost.py --in-situ``), and each call of them
costs more than its share of rows: the kernels' code and the kept data are cold by the time they run. Where the task
names its predictions (``predictions``: its count is ``(predictions(output) == target).sum()``), the count is made
over many micro-batches at once:

- On the CPU a step keeps its output itself (detached: the same memory, no kernel) while the kept outputs fit in
  ``KEEP_OUTPUT_BYTES``; their predictions are made in one argmax with one compare when the next step's would not
  fit (or ``KEEP_OUTPUTS`` are kept), and at the epoch's end (``compare_kept``, which the loop calls inside the
  epoch's timed part): at a small model's batch that is once an epoch. Only a plain tensor the forward pass made
  afresh is kept so: a view (of a weight, say, or of a larger tensor) could change, or hold more memory, before it
  is read.
- Otherwise (a CUDA output, a view, an output past the bound by itself) a step makes only its predictions; they and
  the targets (one value a sample) are compared and summed together every ``KEEP_BATCHES`` micro-batches.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

KEEP_BATCHES = 64  # micro-batches whose predictions are kept before they are compared and summed together
# Most memory the kept outputs may hold together (an epoch of 10 classes at batch 64 on 20,000 samples: 0.8 MB; the
# targets kept beside them, 8 bytes a row, are not counted); an output past it by itself (1000 classes at batch
# 2048 in fp32: 8 MB) gives its predictions at once, its argmax a small part of its step.
# Only on the CPU: a CUDA graph (compile's reduce-overhead) may reuse an output's memory for the next step, and a
# CUDA step's argmax is an asynchronous launch the step does not wait for.
KEEP_OUTPUT_BYTES = 4 << 20
KEEP_OUTPUTS = 1024  # kept outputs compared at the end of the step that reaches this many (each holds a few
# hundred bytes of Python objects beside its memory)


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
        self._bytes_before_step = 0  # ... when this step began (set between steps)
        self._refused = False  # an output was predicted at once for want of room the kept ones hold: compare them
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
            self._refused = bool(self.kept_outputs)  # comparing those would make room (never one alone too large)
            return False
        self._kept_bytes += size
        return True

    def add_count(self, counted: Tensor | None) -> None:
        """A count made elsewhere (a pipeline's last stage); None where the task counts none."""
        if counted is not None:
            self.counts.append(counted)

    def mark(self) -> tuple[int, int, int]:
        """Where this step's part starts (``drop_since`` leaves it out)."""
        return len(self.counts), len(self.kept), len(self.kept_outputs)

    def drop_since(self, mark: tuple[int, int, int]) -> None:
        """Leave out what was added since ``mark`` (a step skip mode leaves out)."""
        counts, kept, kept_outputs = mark
        del self.counts[counts:]
        del self.kept[kept:]
        del self.kept_outputs[kept_outputs:]
        self._kept_bytes = self._bytes_before_step = sum(o.untyped_storage().nbytes() for o, _ in self.kept_outputs)

    def step_done(self) -> None:
        """Between steps: compare what is kept if another step like this one would pass a bound, or if this one's
        output found no room (after a skipped step, whose bytes are dropped, the estimate is 0)."""
        step_bytes = self._kept_bytes - self._bytes_before_step
        if (self._refused or len(self.kept) >= KEEP_BATCHES or len(self.kept_outputs) >= KEEP_OUTPUTS
                or self._kept_bytes + step_bytes > KEEP_OUTPUT_BYTES):
            self.compare_kept()
        self._bytes_before_step = self._kept_bytes

    def total(self) -> Tensor | None:
        """The count so far, a device scalar (None where the task counts none); read between steps."""
        self.compare_kept()
        total = torch.stack(self.counts).sum() if self.counts else None  # one kernel, when read
        if self.before is None:
            return total
        return self.before if total is None else total + self.before

    def compare_kept(self) -> None:
        """Predict, compare and sum what is kept (between steps); the loop calls it at the epoch's end inside the
        timed part, where the rest of the count's work is."""
        kept, outputs = self.kept, self.kept_outputs
        self._clear_kept()
        if outputs:
            assert self._predictions is not None  # outputs are kept only where the task names its predictions
            kept.append((self._predictions(_cat([o for o, _ in outputs])), _cat([t for _, t in outputs])))
        if kept:
            predictions, targets = _cat([p for p, _ in kept]), _cat([t for _, t in kept])
            self.counts.append((predictions == targets).sum())  # not in place: a task's predictions may be its output

    def _clear_kept(self) -> None:
        """Nothing kept any more (what was kept is compared, or dropped)."""
        self.kept, self.kept_outputs = [], []
        self._kept_bytes = self._bytes_before_step = 0
        self._refused = False


def _cat(tensors: list[Tensor]) -> Tensor:
    return torch.cat(tensors) if len(tensors) > 1 else tensors[0]
