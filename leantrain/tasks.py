"""What a task means for the loop: its loss, its quality metric, and what throughput counts.

Losses are returned as sums over the task's units (samples, or tokens), so that the loop can divide
by the number of units in a whole optimizer step: with gradient accumulation over micro-batches of
different sizes, that is the mean per unit, not a mean of per-micro-batch means.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import torch.nn.functional as F
from torch import Tensor

from leantrain.registry import Registry


class Task(Protocol):
    metric: str  # name of the quality metric in results, e.g. "val_acc"
    higher_is_better: bool

    def forward(self, model: Callable[..., Any], x: Tensor, y: Tensor) -> Any:
        """Run the model on a batch. Most tasks call ``model(x)``; seq2seq passes targets for teacher forcing,
        and may return a richer output in eval mode (e.g. logits and a greedy decode)."""
        ...

    def loss_sum(self, output: Tensor, target: Tensor) -> Tensor: ...

    def units(self, target: Tensor) -> int:
        """How many loss units (samples or tokens) a batch holds; the divisor of the loss."""
        ...

    def tokens(self, target: Tensor) -> int | None:
        """Tokens in a batch, for tokens/s; None where the task has no tokens."""
        ...

    def metric_sums(self, output: Tensor, target: Tensor) -> dict[str, Tensor]: ...

    def finalize(self, sums: dict[str, float], units: int) -> dict[str, float]: ...


TASKS: Registry = Registry("task")


@TASKS.register("classification", "cross-entropy loss, accuracy")
class Classification:
    metric = "val_acc"
    higher_is_better = True

    def forward(self, model: Callable[..., Any], x: Tensor, y: Tensor) -> Tensor:
        return model(x)

    def loss_sum(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output.float(), target, reduction="sum")

    def units(self, target: Tensor) -> int:
        return target.shape[0]

    def tokens(self, target: Tensor) -> int | None:
        return None

    def metric_sums(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        return {"correct": (output.argmax(dim=-1) == target).sum()}

    def finalize(self, sums: dict[str, float], units: int) -> dict[str, float]:
        return {"val_acc": sums["correct"] / max(units, 1)}


def get_task(name: str) -> Task:
    return TASKS.get(name).builder()

