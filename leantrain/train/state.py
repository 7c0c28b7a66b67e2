"""Everything the loop and the techniques share while training, and what a checkpoint restores."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from leantrain.parallel.dist import Dist
from leantrain.parallel.plan import ParallelPlan
from leantrain.tasks import Task
from leantrain.techniques.amp import Precision
from leantrain.techniques.base import AutocastFactory, Forward, GradientSync


class ForwardBackward(Protocol):
    def __call__(self, x: torch.Tensor, y: torch.Tensor, loss_divisor: float | int
                 ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


@dataclass
class EpochProgress:
    """How far the current epoch got, for a mid-epoch checkpoint: resuming continues from exactly here."""

    micro_batches: int = 0  # drawn from ``batches.epoch(e)`` so far; a resume skips this many
    steps: int = 0
    units: int = 0
    samples: int = 0
    tokens: int | None = None
    step_losses: list[torch.Tensor] = field(default_factory=list)  # per-step summed losses, on the device
    step_units: list[int] = field(default_factory=list)  # what each step's loss is divided by, at the epoch's end
    elapsed_s: float = 0.0  # training time before the interruption (epoch time_s adds it)
    activation_bytes: int = 0
    correct_sum: torch.Tensor | None = None  # the epoch's running count of correct training units (train_metric)

    def to_dict(self) -> dict[str, Any]:
        return {
            "micro_batches": self.micro_batches, "steps": self.steps, "units": self.units, "samples": self.samples,
            "tokens": self.tokens,
            "step_losses": torch.stack(self.step_losses).cpu() if self.step_losses else None,
            "step_units": list(self.step_units), "elapsed_s": self.elapsed_s,
            "activation_bytes": self.activation_bytes,
            "correct_sum": None if self.correct_sum is None else self.correct_sum.detach().cpu(),
        }

    @classmethod
    def from_dict(cls, saved: dict[str, Any], device: torch.device) -> EpochProgress:
        losses = saved["step_losses"]
        return cls(
            saved["micro_batches"], saved["steps"], saved["units"], saved["samples"], saved["tokens"],
            list(losses.to(device).unbind()) if losses is not None else [], list(saved["step_units"]),
            saved["elapsed_s"], saved["activation_bytes"],
            None if saved.get("correct_sum") is None else saved["correct_sum"].to(device),
        )


@dataclass
class TrainState:
    model: nn.Module  # the module being trained; its weights are what a checkpoint saves
    optimizer: torch.optim.Optimizer
    task: Task
    device: torch.device
    base_lr: float
    steps_per_epoch: int  # optimizer steps per epoch at one micro-batch per step
    total_epochs: int
    # What the loop calls for the forward pass; a technique may swap in a compiled or wrapped module.
    forward: Forward = None  # type: ignore[assignment]  # None: the model itself, set in __post_init__
    # What validation calls; None: ``forward``. The parallel wrap points it at the bare module (no collectives).
    eval_forward: Forward | None = None
    # Entered around every micro-batch's backward but the last of a step: DDP's no_sync skips the all-reduce.
    no_sync: AutocastFactory = contextlib.nullcontext
    dist: Dist = field(default_factory=Dist)
    # The ranks that split each batch and sum the epoch's metrics: ``dist`` itself, except under a pipeline,
    # whose stages see the same batches (its data-parallel replicas split them). None: ``dist``.
    data_dist: Dist = None  # type: ignore[assignment]
    # A parallel mode that runs forward and backward itself (pipeline schedules) sets this: (x, y, loss_divisor)
    # -> the batch's summed loss (detached) and correct units, as the loop's own forward/backward returns them.
    forward_backward: ForwardBackward | None = None
    # How the model is laid out over the ranks, and how its state is saved from that layout.
    plan: ParallelPlan = None  # type: ignore[assignment]  # None: the whole model on every rank
    # Called after a step's last micro-batch backward: a wrap that averages gradients itself (MPI) does it here.
    sync_gradients: GradientSync = lambda: None
    # Autocast, compute and gradient dtypes, fp16's loss scaler: fp32 (no-ops) unless MixedPrecision sets it up.
    precision: Precision = None  # type: ignore[assignment]  # None: fp32 on ``device``, set in __post_init__
    accum_steps: int = 1  # micro-batches per optimizer step; techniques may change it between steps
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    samples_seen: int = 0
    stop_training: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)
    # Reliability (leantrain/train/guards.py): what to do on inf/NaN, and every finished step's mean loss.
    on_nonfinite: str = "stop"
    step_losses: list[float] = field(default_factory=list)
    progress: EpochProgress | None = None  # the unfinished epoch, set while a mid-epoch checkpoint is written or read
    guard_state: dict[str, Any] = field(default_factory=dict)  # the guards' state_dicts, for checkpoints
    # (divisor, 1 / divisor as a device scalar): a step's loss divisor repeats step after step
    _mean_gradient: tuple[float | int, torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = self.model
        if self.data_dist is None:
            self.data_dist = self.dist
        if self.plan is None:
            self.plan = ParallelPlan(self.dist)
        if self.precision is None:
            self.precision = Precision(self.device)

    @property
    def grad_scaler(self) -> torch.amp.GradScaler:
        """The precision's loss scaler (read-only here: a technique that inspects the scale reads it)."""
        return self.precision.scaler

    @property
    def total_steps(self) -> int:
        """Planned optimizer steps at one micro-batch per step, for schedules."""
        return self.steps_per_epoch * self.total_epochs

    def mean_gradient(self, divisor: float | int, loss: torch.Tensor) -> torch.Tensor:
        """The gradient a summed loss's backward starts from to give the mean's: 1 / divisor, as a scalar of the
        loss's type and device, made again only when the divisor changes (not a tensor per step)."""
        cached = self._mean_gradient
        if cached is None or cached[0] != divisor or cached[1].dtype != loss.dtype or cached[1].device != loss.device:
            cached = self._mean_gradient = divisor, torch.full((), 1.0 / divisor, dtype=loss.dtype, device=loss.device)
        return cached[1]

    def set_lr(self, lr: float) -> None:
        # A user's optimizer may give groups their own lrs: a technique's lr scales each by its ratio to group 0's.
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_ratio", 1.0)
