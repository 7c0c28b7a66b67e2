"""Public callbacks: a user's code at the loop's events (the same events techniques hook, see
``leantrain.techniques.base``), plus the two most asked for, early stopping and keeping the best weights.

A callback is a ``Callback`` subclass overriding any of ``on_fit_start(state)``, ``before_step(state)``,
``after_micro_backward(state, i)``, ``before_optimizer_step(state)``, ``after_optimizer_step(state)``,
``on_epoch_end(state, record)`` and ``on_fit_end(state)``. ``state`` is the loop's ``TrainState`` (model,
optimizer, epoch, step, ``stop_training``, ``records``); ``record`` is the epoch's record (``train_loss``,
``val_loss``, the task's metrics), which a callback may add keys to. Callbacks run after the techniques,
in the order given. ``fit`` passes the user's own objects (not copies), so a callback may collect what it sees;
a callback that keeps state across epochs returns it from ``state_dict`` to survive a resume.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from leantrain.errors import UsageError
from leantrain.fileio import atomic_path
from leantrain.techniques.base import StepState, Technique

# Metrics where lower is better; anything else named is taken as higher-is-better.
LOWER_IS_BETTER = ("loss", "mse", "mae", "ppl", "error")


def _mode(monitor: str, mode: str | None) -> str:
    if mode is None:
        return "min" if any(part in monitor for part in LOWER_IS_BETTER) else "max"
    if mode not in ("min", "max"):
        raise UsageError(f"mode must be 'min' or 'max', got {mode!r}")
    return mode


class Callback(Technique):
    name = "callback"
    summary = "a user's code at the loop's events"

    def describe(self) -> str:
        return type(self).__name__


class Monitor(Callback):
    """Follows one key of the epoch records; ``monitor=None`` is the task's own metric (``val_acc``, ``val_mse``...)."""

    def __init__(self, monitor: str | None = None, mode: str | None = None, min_delta: float = 0.0):
        if monitor is not None and not isinstance(monitor, str):
            raise UsageError(f"monitor must be a key of the epoch record such as 'val_loss', got {monitor!r}")
        self.monitor, self.mode_given, self.min_delta = monitor, mode, float(min_delta)
        self.best: float | None = None

    def improved(self, state: StepState, record: dict[str, Any]) -> bool:
        key = self.monitor or state.task.metric  # type: ignore[attr-defined]  # the loop's TrainState has one
        if key not in record:
            raise UsageError(f"{type(self).__name__}: monitor {key!r} is not in the epoch record; "
                             f"choose one of: {', '.join(sorted(k for k in record if k.startswith(('val_', 'train_'))))}")
        value = float(record[key])
        if self.monitor is None and self.mode_given is None:  # the task's metric: the task says which way is up
            higher = state.task.higher_is_better  # type: ignore[attr-defined]
        else:
            higher = _mode(key, self.mode_given) == "max"
        sign = 1.0 if higher else -1.0
        better = not math.isnan(value) and (self.best is None or sign * (value - self.best) > self.min_delta)
        if better:
            self.best = value
        return better

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, saved: dict[str, Any], state: StepState) -> None:
        self.best = saved.get("best")


class EarlyStopping(Monitor):
    """Stop after ``patience`` epochs without an improvement of more than ``min_delta``; the record says when."""

    def __init__(self, monitor: str | None = "val_loss", patience: int = 3, mode: str | None = None,
                 min_delta: float = 0.0):
        super().__init__(monitor, mode, min_delta)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise UsageError(f"EarlyStopping: patience must be a positive integer, got {patience!r}")
        self.patience, self.waited = patience, 0

    def on_epoch_end(self, state: StepState, record: dict[str, Any]) -> None:
        self.waited = 0 if self.improved(state, record) else self.waited + 1
        if self.waited >= self.patience:
            state.stop_training = True
            record["stopped_early"] = True

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "waited": self.waited}

    def load_state_dict(self, saved: dict[str, Any], state: StepState) -> None:
        super().load_state_dict(saved, state)
        self.waited = saved.get("waited", 0)


class KeepBest(Monitor):
    """Write the model's weights to ``path`` (atomically) each time the monitored metric improves; ``fit`` gives
    ``path`` a default in its ``checkpoint_dir`` (``<run>.best.pt``). The file is ``{"model": state_dict,
    "epoch": e, <monitor>: value}``, read back with ``torch.load(path, weights_only=True)``."""

    def __init__(self, path: str | Path | None = None, monitor: str | None = None, mode: str | None = None,
                 min_delta: float = 0.0):
        super().__init__(monitor, mode, min_delta)
        self.path = Path(path) if path is not None else None
        self.best_epoch: int | None = None

    def on_epoch_end(self, state: StepState, record: dict[str, Any]) -> None:
        if not self.improved(state, record):
            return
        self.best_epoch = int(record["epoch"])
        record["best_so_far"] = True
        if self.path is None or not state.dist.rank == 0:
            return
        key = self.monitor or state.task.metric  # type: ignore[attr-defined]
        weights = {k: v.detach().cpu() for k, v in state.model.state_dict().items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            torch.save({"model": weights, "epoch": self.best_epoch, key: self.best}, tmp)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_epoch": self.best_epoch}

    def load_state_dict(self, saved: dict[str, Any], state: StepState) -> None:
        super().load_state_dict(saved, state)
        self.best_epoch = saved.get("best_epoch")


class SchedulerStep(Callback):
    """Steps a user's ``torch.optim.lr_scheduler.LRScheduler``: after every optimizer step (``interval='step'``)
    or at each epoch's end (``'epoch'``; ``ReduceLROnPlateau`` is given the epoch's ``val_loss``). Built on
    the loop's optimizer at fit start; its state rides in checkpoints."""

    name = "lr_scheduler"

    def __init__(self, scheduler: Any, interval: str = "epoch"):
        if interval not in ("epoch", "step"):
            raise UsageError(f"fit: scheduler_interval must be 'epoch' or 'step', got {interval!r}")
        self.given, self.interval = scheduler, interval
        self.scheduler: Any = None
        self.saved: dict[str, Any] | None = None

    def describe(self) -> str:
        return f"lr_scheduler/{self.interval}"  # the same before and after building: checkpoints compare it

    def on_fit_start(self, state: StepState) -> None:
        if isinstance(self.given, torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau):
            if self.given.optimizer is not state.optimizer:
                raise UsageError("fit: the scheduler was built on another optimizer than the one training; pass "
                                 "that optimizer as optimizer=, or a factory scheduler=lambda opt: StepLR(opt, 10)")
            self.scheduler = self.given
        else:
            self.scheduler = self.given(state.optimizer)
        if self.saved:
            self.scheduler.load_state_dict(self.saved)
            # Building the scheduler reset the groups' lr (its first step); put back the lr it had reached.
            for group, lr in zip(state.optimizer.param_groups, self.scheduler.get_last_lr()):
                group["lr"] = lr

    def after_optimizer_step(self, state: StepState) -> None:
        if self.interval == "step":
            self.scheduler.step()

    def on_epoch_end(self, state: StepState, record: dict[str, Any]) -> None:
        if self.interval == "epoch":
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(record["val_loss"])
            else:
                self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, saved: dict[str, Any], state: StepState) -> None:
        self.saved = saved.get("scheduler")


__all__ = ["Callback", "EarlyStopping", "KeepBest", "SchedulerStep"]
