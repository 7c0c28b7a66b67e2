"""Guards against silent divergence: non-finite losses/gradients before the optimizer step, and loss spikes.

Non-finite check (stop mode, the default). Each step the loop hands the guard the step's summed loss.
  - On the CPU the losses are kept, and read every ``DEVICE_CHECK_EVERY`` steps (one process: not sooner than
    ``MIN_READ_INTERVAL_S`` after its last read), before every checkpoint is written and at the epoch's end (one
    stack, one host read): reading each step's loss as it came made the guard's call 5.7 us at a small model's
    0.85 ms step, now 2.1 us (``benchmarks/framework_cost.py --in-situ``). The gradients are not read every
    step: a fused pass over them costs ~10-20 us, 2-4% of a small model's step (benchmarks/guards.py), and ~1.3 ms
    (a full read of 21 MB) on a 5M-parameter model. A non-finite gradient with a finite loss makes the weights
    non-finite, so the next step's loss is non-finite; the weights themselves are read with the losses before a
    checkpoint and at the epoch's end, where no later loss would show them (and for the weights no forward reads,
    such as an embedding row no batch looked up yet), not at the interval, where the next losses will. The error
    names the first bad step; several CPU ranks agree on the smallest (one small all-reduce), so every rank stops
    at the same step.
  - On CUDA, the loss and the gradients' norms are folded into one scalar
    (``NonFiniteGuard.total``: finite iff all of them are); "first bad step" is kept on the device (no host
    sync) and read every ``DEVICE_CHECK_EVERY`` steps, always before a checkpoint is written and at the
    epoch's end (where the loop syncs anyway). With several ranks, reading is one all-reduce, so every rank
    stops at the same step.
  Either way a bad step's weights are never saved: the last good checkpoint is kept, and the error names the step
  the guard saw go bad. Weights a forward reads live at most an interval (one CPU process: a quarter of a second
  and at most 32 steps more); on the CPU, weights no forward reads live until the next checkpoint or the epoch's
  end (where a later forward reads one first, the error names that forward's step).
``skip`` mode must know before each optimizer step, so it reads the loss and every gradient every step
(one fused pass; documented cost). Under fp16 the GradScaler already checks gradients and skips
overflowing steps (and counts them): the guard then checks only the loss, and in skip mode leaves skipping
(and counting) to the scaler. Skipping is for rare bad batches: an epoch that skipped more than
``MAX_SKIPPED_FRACTION`` of its steps is divergence, and stops the run like stop mode would.

Validation. A non-finite validation loss stops the run in either mode: in-memory validation data are checked
for inf/NaN before the run (preflight.py), so it is the model's outputs diverging; streamed validation data
are read only at each epoch's end, so it may be theirs.

Spikes. Per-step losses stay on the device until the epoch's end; then each is compared with the
median and MAD (median absolute deviation, a robust spread) of the ``window`` steps before it.
"""
from __future__ import annotations

import math
import statistics
import time
from collections import deque
from typing import Any

import torch

from leantrain._torch_private import foreach_norm, non_finite_check_
from leantrain.errors import TrainingDiverged

DEVICE_CHECK_EVERY = 32
# One CPU process reads its kept losses at the interval only this long after its last read: a read is a few cold
# kernels (~0.1 ms), 0.4% of a small model's 0.85 ms steps at every 32nd; spaced so, at most 0.04%, and a bad step
# is still found within a quarter of a second and at most 32 steps more. Ranks keep the plain interval: they read
# together (a collective), and their clocks differ.
MIN_READ_INTERVAL_S = 0.25
NO_STEP = -1
MAX_SKIPPED_FRACTION = 0.5  # skip mode: more of an epoch's steps skipped than this stops the run


NonFiniteLoss = TrainingDiverged  # training diverged (a loss or gradient became inf/NaN): one line, exit 3


class NonFiniteGuard:
    def __init__(self, mode: str, device: torch.device, world_size: int, scaler_checks_grads: bool):
        self.mode = mode  # "stop" or "skip"
        self.scaler_checks_grads = scaler_checks_grads
        # On the CPU the step losses are kept and read together at the interval (on CUDA: folded on the device).
        self.loss_on_host = device.type != "cuda"
        self.alone = world_size == 1
        self.kept_losses: list[torch.Tensor] = []  # the CPU's step losses since the last check
        self.kept_from = 0  # the step (from 1) of kept_losses[0]
        self.check_every = DEVICE_CHECK_EVERY
        self._last_read = time.monotonic()  # when this process last read its kept losses
        self.first_bad = torch.full((), NO_STEP, dtype=torch.int64, device=device)
        self.skipped = 0  # steps of this epoch skipped by this guard (skip mode, fp32/bf16); fp16's are the scaler's
        self._flags: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # device -> (found, one), reused

    def finite_now(self, step_loss: torch.Tensor, grads: list[torch.Tensor]) -> bool:
        """Whether the loss and every gradient are finite, read now (a host sync on CUDA). One fused pass over
        the gradients per device and dtype, and two scalar reads: the cheapest exact check before an update."""
        if not math.isfinite(float(step_loss)):
            return False
        if not grads or self.scaler_checks_grads:
            return True
        groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for g in grads:
            g = g if type(g) is torch.Tensor and not g.is_sparse else _dense(g)
            groups.setdefault((g.device, g.dtype), []).append(g)  # the kernel takes one device and dtype per call
        bad = False
        for (device, _), group in groups.items():
            if device not in self._flags:
                self._flags[device] = torch.zeros((), device=device), torch.ones((), device=device)
            found, one = self._flags[device]
            non_finite_check_(group, found, one)
            if float(found):
                found.zero_()
                bad = True
        return not bad

    def total(self, step_loss: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
        """One on-device scalar that is finite iff the loss and every gradient are: the loss plus the sum of
        the gradients' norms (inf/NaN propagate through norms and sums; a norm past float max is divergence
        anyway). Three kernels (one multi-tensor norm, a stack, a sum) and an add, whatever the model's size."""
        if grads and not self.scaler_checks_grads:
            return torch.stack(foreach_norm([_dense(g) for g in grads])).sum() + step_loss
        return step_loss

    def gradients(self, state: Any) -> list[torch.Tensor]:
        """The gradients an update would apply: the optimizer's parameters' (listing them is ~20 us cheaper than
        walking the module tree); none where the loss scaler checks them itself."""
        if self.scaler_checks_grads:
            return []
        return [p.grad for group in state.optimizer.param_groups for p in group["params"] if p.grad is not None]

    def should_skip(self, state: Any, step_loss: torch.Tensor) -> bool:
        """Skip mode: whether to leave this step's update out (reads the flag: one sync on CUDA)."""
        if self.scaler_checks_grads:
            return False  # the scaler skips (and counts) steps with inf/NaN gradients itself
        skip = state.dist.any(not self.finite_now(step_loss, self.gradients(state)))
        self.skipped += skip
        return skip

    def note(self, state: Any, step_loss: torch.Tensor) -> None:
        """Stop mode: keep the loss (CPU), or remember the first bad step on the device; either way look at
        everything when the interval comes round."""
        step = state.step + 1  # the step being taken, counted from 1
        if self.loss_on_host:
            if not self.kept_losses:
                self.kept_from = step
            self.kept_losses.append(step_loss)
            if step % self.check_every == 0 and (not self.alone or self._read_due()):
                self.check(state, weights=False)  # the next steps' losses read these weights
            return
        bad = ~torch.isfinite(self.total(step_loss, self.gradients(state)))
        self.first_bad = torch.where((self.first_bad == NO_STEP) & bad, step, self.first_bad)
        if step % self.check_every == 0:
            self.check(state)

    def check(self, state: Any, weights: bool = True) -> None:
        """Raise NonFiniteLoss (on every rank alike) if any rank saw a bad step, or (on the CPU, with ``weights``) if
        a weight the optimizer updates is not finite."""
        if self.mode != "stop":
            return
        if self.loss_on_host:
            losses, self.kept_losses = torch.stack(self.kept_losses) if self.kept_losses else None, []
            self._last_read = time.monotonic()
            checked = [losses] if losses is not None else []
            if weights:
                checked += [_dense(p.detach()) for group in state.optimizer.param_groups for p in group["params"]]
            # One read for the kept losses and the weights together; only a bad one is looked at again.
            all_finite = not checked or _all_finite(checked)
            first_bad_loss = NO_STEP if all_finite else self._first_bad(losses)
            weights_bad = not all_finite and first_bad_loss == NO_STEP
            if self.alone:
                if first_bad_loss != NO_STEP:
                    self._raise(first_bad_loss, state.epoch + 1)
                if weights_bad:
                    self._raise_weights(state.step, state.epoch + 1)
                return
            # Every rank joins: the smallest bad step over ranks (a bad loss's step, else a bad weight's), as a max of
            # negatives, and whether it was a loss.
            local = first_bad_loss if first_bad_loss != NO_STEP else state.step if weights_bad else NO_STEP
            worst, loss_bad = state.dist.max([-local if local != NO_STEP else -math.inf,
                                              1.0 if first_bad_loss != NO_STEP else 0.0])
            if worst != -math.inf:
                (self._raise if loss_bad else self._raise_weights)(int(-worst), state.epoch + 1)
            return
        local = int(self.first_bad)
        # The smallest bad step over ranks, as a max of negatives (the Dist context offers sum and max).
        worst = state.dist.max([-local if local != NO_STEP else -math.inf])[0]
        if worst != -math.inf:
            self._raise(int(-worst), state.epoch + 1)

    def _read_due(self) -> bool:
        return time.monotonic() - self._last_read >= MIN_READ_INTERVAL_S

    def _first_bad(self, losses: torch.Tensor | None) -> int:
        """The first step among the kept ``losses`` (stacked) whose loss is not finite; NO_STEP if none is."""
        if losses is None:
            return NO_STEP
        bad = torch.isfinite(losses).logical_not_().nonzero()
        return self.kept_from + int(bad[0, 0]) if len(bad) else NO_STEP

    @staticmethod
    def _raise_weights(step: int, epoch: int) -> None:
        raise NonFiniteLoss(f"the weights became non-finite (inf/NaN) by step {step} (epoch {epoch}): a non-finite "
                            "gradient reached them; training stopped. Lower the lr, check the data for NaN, or pass "
                            "--on-nonfinite skip")

    @staticmethod
    def _raise(step: int, epoch: int) -> None:
        raise NonFiniteLoss(f"the loss or gradients became non-finite (inf/NaN) at step {step} (epoch {epoch}); "
                            "training stopped. Lower the lr, check the data for NaN, or pass --on-nonfinite skip")

    def end_epoch(self, state: Any, steps: int) -> int:
        """This epoch's skipped steps (the count starts again at 0); more than ``MAX_SKIPPED_FRACTION`` of its
        ``steps`` raise NonFiniteLoss before the epoch is recorded or saved."""
        skipped, self.skipped = self.skipped, 0
        if skipped > MAX_SKIPPED_FRACTION * steps:
            raise NonFiniteLoss(f"{skipped} of {steps} steps in epoch {state.epoch + 1} were skipped for a non-finite "
                                "(inf/NaN) loss or gradients (--on-nonfinite skip): training diverged; training "
                                "stopped. Lower the lr, or pass --on-nonfinite stop to stop at the first bad step")
        return skipped

    @staticmethod
    def check_validation(state: Any, record: dict[str, Any]) -> None:
        """A non-finite validation loss stops the run (either mode: there is no update to leave out)."""
        if record.get("val_samples") and not math.isfinite(record["val_loss"]):
            raise NonFiniteLoss(f"the validation loss became non-finite (inf/NaN) in epoch {state.epoch + 1}: the "
                                "model's outputs overflowed, or the validation data hold inf/NaN; training stopped. "
                                "Check the validation data for NaN, or lower the lr")

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_skipped": self.skipped}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        # A mid-epoch checkpoint continues its epoch's count. "skipped" (older checkpoints) was cumulative over
        # epochs: not this epoch's, so not read.
        self.skipped = int(saved.get("epoch_skipped", 0))


class SpikeDetector:
    """Flags a step whose loss exceeds the rolling median by ``threshold`` robust standard deviations.

    The MAD is floored at ``min_rel_spread`` of the median: on a plateau the MAD can be tiny, and noise
    that is tiny in absolute terms is not a spike. Only upward jumps count (falling loss is progress).
    """

    def __init__(self, window: int = 64, threshold: float = 8.0, min_history: int = 16, min_rel_spread: float = 0.02):
        self.window, self.threshold, self.min_history, self.min_rel_spread = window, threshold, min_history, min_rel_spread
        self.history: deque[float] = deque(maxlen=window)

    def scan(self, losses: list[float], first_step: int) -> list[int]:
        """Steps (global, from 1) among ``losses`` (steps ``first_step``, ``first_step + 1``, ...) that spiked."""
        spikes = []
        for offset, loss in enumerate(losses):
            if not math.isfinite(loss):
                continue  # the non-finite guard's business
            if len(self.history) >= self.min_history:
                median = statistics.median(self.history)
                mad = statistics.median(abs(v - median) for v in self.history)
                spread = max(1.4826 * mad, self.min_rel_spread * abs(median), 1e-12)
                if (loss - median) / spread > self.threshold:
                    spikes.append(first_step + offset)
            self.history.append(loss)
        return spikes

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.history = deque(saved.get("history", []), maxlen=self.window)


class Guards:
    """What the loop consults each step: the non-finite guard, the spike detector and the checkpoint clock.

    Their state travels in ``state.guard_state`` through checkpoints, so a resumed run flags as the
    uninterrupted one would."""

    def __init__(
        self, state: Any, checkpoint_every: tuple[int | None, float | None] = (None, None),
        save: Any = lambda state: None,
    ):
        scaler_checks_grads = state.precision.scaler_checks_grads
        self.nonfinite = NonFiniteGuard(state.on_nonfinite, state.device, state.dist.world_size, scaler_checks_grads)
        self.spikes = SpikeDetector()
        saved = state.guard_state or {}
        self.nonfinite.load_state_dict(saved.get("nonfinite", {}))
        self.spikes.load_state_dict(saved.get("spikes", {}))
        self.every_steps, self.every_s = checkpoint_every
        self._save = save
        self._last_save = time.monotonic()

    def before_optimizer_step(self, state: Any, step_loss: torch.Tensor) -> bool:
        """True when this step's update must be left out (skip mode); in stop mode may raise NonFiniteLoss."""
        if self.nonfinite.mode == "skip":
            return self.nonfinite.should_skip(state, step_loss)
        self.nonfinite.note(state, step_loss)
        return False

    def check(self, state: Any) -> None:
        self.nonfinite.check(state)

    def checkpoint_due(self, state: Any) -> bool:
        if self.every_steps is not None:
            return state.step % self.every_steps == 0
        if self.every_s is not None and time.monotonic() - self._last_save >= self.every_s:
            return True
        return False

    def save(self, state: Any) -> None:
        self.check(state)  # never write a checkpoint holding a diverged step
        state.guard_state = self.state_dict()
        self._save(state)
        self._last_save = time.monotonic()

    def epoch_end(self, state: Any, sums: list[float], step_units: list[int]) -> dict[str, Any]:
        """The epoch record's guard fields, from the epoch's per-step summed losses (on the host: the loop moved
        them there at once); each is divided by its step's units here (no division kernel per step)."""
        values = [total / max(1, units) for total, units in zip(sums, step_units)]
        first_step = len(state.step_losses) + 1
        state.step_losses.extend(values)
        fields: dict[str, Any] = {"loss_spikes": self.spikes.scan(values, first_step)}
        if self.nonfinite.mode == "skip":
            fields["nonfinite_skipped_steps"] = self.nonfinite.end_epoch(state, len(sums))
        return fields

    def after_validation(self, state: Any, record: dict[str, Any]) -> None:
        """Before the epoch is recorded, handed to the techniques or saved: no NaN validation loss in a record."""
        self.nonfinite.check_validation(state, record)

    def state_dict(self) -> dict[str, Any]:
        return {"nonfinite": self.nonfinite.state_dict(), "spikes": self.spikes.state_dict()}


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """Every element finite: a norm per tensor (one multi-tensor kernel), summed in fp32. fp16 tensors are read
    element by element instead, as their norm can overflow fp16's 65,504 while every value is finite."""
    wide = [t for t in tensors if t.dtype != torch.float16]
    half = [t for t in tensors if t.dtype == torch.float16]
    norms_finite = not wide or math.isfinite(float(torch.stack([n.float() for n in foreach_norm(wide)]).sum()))
    return norms_finite and all(bool(torch.isfinite(t).all()) for t in half)


def _dense(grad: torch.Tensor) -> torch.Tensor:
    """The values to check: a sharded (FSDP) gradient's own shard (each rank checks its part, and the ranks agree
    on the verdict), a sparse gradient's stored values."""
    grad = grad.to_local() if hasattr(grad, "to_local") else grad  # DTensor
    return grad.coalesce().values() if grad.is_sparse else grad
