"""What an epoch adds up, training's and validation's alike: one rank's counts, then the whole's.

Each rank counts its own share of the data; at the epoch's end ``reduce`` sums every field over the data ranks
in one collective, however many fields there are. A new epoch metric is a field here and the line that counts it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from leantrain.parallel.dist import Dist


@dataclass
class EpochSums:
    """One rank's sums over an epoch (or, after ``reduce``, every data rank's). Fields typed ``int`` or ``float``
    are summed in the order they are declared (the loss first), then the tokens, then the task's metrics.

    Device-side running totals (per-step losses, correct counts) stay on the device while the epoch runs and are
    put here once, at its end: filling these fields never costs a host sync per step."""

    loss: float = 0.0  # summed loss of the units below (a step left out by skip mode counts none)
    units: int = 0  # what the loss is a mean over: samples, or tokens
    samples: int = 0
    steps: int = 0  # optimizer steps (training) or batches (validation)
    correct: float = 0.0  # correctly predicted training units: the task's train_metric
    timed_samples: int = 0  # the samples throughput is measured over (a process's first step left out)
    tokens: int | None = None  # None: the task counts no tokens
    metrics: dict[str, float] = field(default_factory=dict)  # the task's own validation sums, by name

    def add(self, *, units: int = 0, samples: int = 0, steps: int = 0, tokens: int | None = None) -> None:
        """Count one step's (or batch's) data; ``tokens`` None where the task counts none."""
        self.units += units
        self.samples += samples
        self.steps += steps
        if tokens is not None:
            self.tokens = (self.tokens or 0) + tokens

    def reduce(self, dist: Dist) -> EpochSums:
        """Every field summed over ``dist``'s ranks, in one collective (float64: counts exact up to 2**53); on one
        process, the same numbers. Every rank holds the task's metric names: sorted, they line up across ranks."""
        numbers = {f.name: _type_name(f.type) for f in fields(self) if _type_name(f.type) in ("int", "float")}
        metric_names = sorted(self.metrics)
        totals = dist.sum([*(getattr(self, n) for n in numbers), self.tokens or 0,
                           *(self.metrics[n] for n in metric_names)])
        summed: dict[str, Any] = {n: int(t) if numbers[n] == "int" else t for n, t in zip(numbers, totals)}
        tokens = totals[len(numbers)]
        metrics = dict(zip(metric_names, totals[len(numbers) + 1:]))
        return type(self)(**summed, tokens=int(tokens) if self.tokens is not None else None,
                          metrics={n: metrics[n] for n in self.metrics})  # in the order they were counted

    def asdict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(annotation: Any) -> str:
    """A field's declared type by name: a string where annotations are postponed, a class where not."""
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
