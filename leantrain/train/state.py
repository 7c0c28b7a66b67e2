"""Everything the loop and the techniques share while training, and what a checkpoint restores."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from leantrain.parallel.dist import Dist
from leantrain.tasks import Task
from leantrain.techniques.base import AutocastFactory, Forward, GradientSync


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
    # Called after a step's last micro-batch backward: a wrap that averages gradients itself (MPI) does it here.
    sync_gradients: GradientSync = lambda: None
    autocast: AutocastFactory = contextlib.nullcontext
    compute_dtype: torch.dtype = torch.float32
    grad_scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cpu", enabled=False))
    accum_steps: int = 1  # micro-batches per optimizer step; techniques may change it between steps
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    samples_seen: int = 0
    stop_training: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = self.model

    @property
    def total_steps(self) -> int:
        """Planned optimizer steps at one micro-batch per step, for schedules."""
        return self.steps_per_epoch * self.total_epochs

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
