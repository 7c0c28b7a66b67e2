"""Learning-rate schedule: linear warmup, then cosine annealing to a floor (Goyal et al. 2017; Loshchilov & Hutter 2017).

The schedule is a function of *training progress in micro-batches*: ``t`` micro-batches done out of
``state.total_steps`` planned (the loop's optimizer steps at one micro-batch per step). Without
gradient accumulation a micro-batch is an optimizer step, so this is the usual per-step schedule. With
accumulation (fixed or adaptive k), counting micro-batches keeps the schedule tied to the data seen: it
still reaches its floor exactly at the end of training, whatever k was along the way, whereas counting
optimizer steps against a plan made at k=1 would leave it stuck early in the cosine.
"""
from __future__ import annotations

import math
from typing import Any

from leantrain.options import Option
from leantrain.techniques.base import StepState, Technique
from leantrain.techniques.registry import register


def warmup_cosine_lr(t: int, total: int, base_lr: float, warmup: float = 0.05, min_lr_ratio: float = 0.1) -> float:
    """lr for the update that starts after ``t`` units of progress (of ``total``).

    Warmup: ``base_lr * (t + 1) / W`` for ``t < W`` (W = round(warmup * total); the first update already
    moves). Then cosine from ``base_lr`` at ``t = W`` to ``min_lr_ratio * base_lr`` at ``t = total``.
    """
    warmup_steps = round(warmup * total)
    if t < warmup_steps:
        return base_lr * (t + 1) / warmup_steps
    floor = min_lr_ratio * base_lr
    q = min(1.0, (t - warmup_steps) / max(1, total - warmup_steps))
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * q))


def _fraction(warmup: float) -> float:
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup must be a fraction in [0, 1), got {warmup}")
    return warmup


def _ratio(min_lr_ratio: float) -> float:
    if not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    return min_lr_ratio


@register
class WarmupCosine(Technique):
    name = "schedule"
    summary = "warmup-cosine: linear warmup, then cosine annealing to a floor, over the data seen"
    options = (
        Option("schedule", str, "constant", "learning-rate schedule: constant, or linear warmup + cosine annealing",
               choices=("constant", "warmup-cosine")),
        Option("warmup", float, 0.05, "warmup-cosine: fraction of training spent warming up", check=_fraction),
        Option("min_lr_ratio", float, 0.1, "warmup-cosine: final lr as a fraction of lr", check=_ratio),
    )
    runs_after = ("accumulation",)  # shapes the base lr that accumulation scales for its batch
    parallel_modes = frozenset({"none", "ddp", "mpi", "fsdp", "pipeline", "hybrid", "ensemble"})
    sets_lr = True

    @classmethod
    def from_config(cls, config: Any) -> WarmupCosine | None:
        return cls(config.warmup, config.min_lr_ratio) if config.schedule == "warmup-cosine" else None

    def __init__(self, warmup: float = 0.05, min_lr_ratio: float = 0.1):
        if not 0 <= warmup < 1:
            raise ValueError(f"warmup must be a fraction in [0, 1), got {warmup}")
        if not 0 <= min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.warmup, self.min_lr_ratio = warmup, min_lr_ratio
        self.micro_batches_done = 0

    def describe(self) -> str:
        return f"warmup{self.warmup:g}-cosine"

    def before_step(self, state: StepState) -> None:
        # state.base_lr may have been rescaled for the current effective batch (adaptive accumulation).
        state.set_lr(warmup_cosine_lr(self.micro_batches_done, state.total_steps, state.base_lr, self.warmup, self.min_lr_ratio))

    def after_micro_backward(self, state: StepState, micro_index: int) -> None:
        self.micro_batches_done += 1

    def on_epoch_end(self, state: StepState, record: dict[str, Any]) -> None:
        record["schedule_progress"] = self.micro_batches_done / max(1, state.total_steps)

    def state_dict(self) -> dict[str, Any]:
        return {"micro_batches_done": self.micro_batches_done}

    def load_state_dict(self, saved: dict[str, Any], state: StepState) -> None:
        self.micro_batches_done = saved.get("micro_batches_done", 0)
