"""Timing real training steps of each alternative, side by side: warm-up, then interleaved rounds, median.

Each alternative trains its own deep copy of the model (and its own optimizer) on one real batch of the
run's batch size, inside ``torch.random.fork_rng``: the run's model, optimizer and random streams are
left exactly as they were, so a probed run is bit-for-bit the run with the chosen value forced.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager

import torch
from torch import nn

from leantrain.techniques.amp import DTYPES, autocast_for
from leantrain.techniques.precision import keep_unsupported_in_fp32
from leantrain.train.metrics import now
from leantrain.tuning.choice import Trial

WARMUP_STEPS = 2  # allocation, kernel selection and oneDNN primitive creation happen here
ROUNDS = 5
ROUND_S = 0.05  # each round times about this long per alternative (at least one step)
MAX_STEPS_PER_ROUND = 20  # few steps on one batch: the loss compared is still learning, not memorising
# An alternative this much slower than the best in warm-up cannot win: stop spending time on it.
HOPELESS = 3.0

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


class _Stepper:
    """Something that can take ``n`` steps and report its loss; the probe only times and compares them."""

    def steps(self, n: int) -> None: ...

    def loss(self) -> float | None:
        return None


def _timed(stepper: _Stepper, device: torch.device, n: int = 1) -> float:
    start = now(device)
    stepper.steps(n)
    return (now(device) - start) / n


def _warm_up(stepper: _Stepper, device: torch.device, best: tuple[float, float] | None,
             judge_first_step: bool = True) -> tuple[float, float, float]:
    """(first step's seconds, seconds per step once warm, how many times slower than ``best`` it gave up at).

    ``WARMUP_STEPS`` steps are taken before any is held against a warm time (allocation, kernel selection and
    lazily made state happen in them: a fused Adam kernel's second step once took 3.5x the loop's warm step, and
    the kernel 4x faster once warm was dropped). Once warm: the better of two timed steps (one step may meet a
    neighbour's burst). ``best`` is the fastest alternative so far as (first step, warm step). With
    ``judge_first_step``, a first step hopelessly slower than ``best``'s first step ends the warm-up at once, so
    that an emulated path ~40x slower than fp32 (fp16 convolutions on most CPUs) costs a step, not a minute;
    first steps are only held against first steps, with a wider allowance.
    """
    times = [_timed(stepper, device)]
    if judge_first_step and best is not None and times[0] > 2 * HOPELESS * best[0]:
        return times[0], times[0], times[0] / best[0]
    times += [_timed(stepper, device) for _ in range(WARMUP_STEPS + 1)]
    return times[0], min(times[WARMUP_STEPS:]), 0.0


def _race(steppers: Mapping[str, _Stepper], device: torch.device, rounds: int | None,
          judge_first_step: bool = True) -> dict[str, Trial]:
    """Warm up each, drop the hopeless (judged warm, or on a first step when ``judge_first_step``), then time the
    rest in rotating order, round by round. The first is the reference (fp32, torch's default Adam): never dropped
    for its speed, as its loss judges the others' and it is what a choice falls back to."""
    rounds = ROUNDS if rounds is None else rounds
    trials = {name: Trial() for name in steppers}
    warm, slower, failed = _warm_all(steppers, device, judge_first_step)
    leader = min((name for name in warm if not slower[name]), key=lambda name: warm[name][1])
    fastest = warm[leader][1]
    alive = []
    for index, name in enumerate(steppers):
        if name in failed:
            trials[name].skipped = failed[name]
            continue
        ratio = slower[name] or warm[name][1] / fastest
        if ratio > HOPELESS and index > 0:
            trials[name].ms_per_step = [1e3 * warm[name][1]]
            trials[name].skipped = f"{ratio:.1f}x slower than {leader} in warm-up"
        else:
            alive.append(name)
    per_round = max(1, min(MAX_STEPS_PER_ROUND, math.ceil(ROUND_S / max(fastest, 1e-6))))
    for r in range(rounds):
        for name in alive[r % len(alive):] + alive[:r % len(alive)]:  # rotate: no one always goes first
            trials[name].ms_per_step.append(1e3 * _timed(steppers[name], device, per_round))
    for name in alive:
        trials[name].loss = steppers[name].loss()
    return trials


def _warm_all(steppers: Mapping[str, _Stepper], device: torch.device, judge_first_step: bool
              ) -> tuple[dict[str, tuple[float, float]], dict[str, float], dict[str, str]]:
    """Each alternative warmed up in turn, against the fastest so far: (first, warm) seconds, how many times
    slower it gave up at (0: it did not), and why each that raised failed."""
    warm: dict[str, tuple[float, float]] = {}
    slower: dict[str, float] = {}
    failed: dict[str, str] = {}
    leader = ""
    for name, stepper in steppers.items():
        try:
            first, steady, slower[name] = _warm_up(stepper, device, warm[leader] if leader else None,
                                                   judge_first_step)
        except (RuntimeError, NotImplementedError) as e:  # e.g. an op without a kernel for this dtype, or OOM
            if not warm:
                raise  # the reference itself: the run would fail the same way, so say so now
            failed[name] = f"failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
            continue
        warm[name] = (first, steady)
        if not slower[name] and (not leader or steady < warm[leader][1]):
            leader = name
    return warm, slower, failed


class _TrainSteps(_Stepper):
    """Full training steps (forward, loss, backward through the scaler, optimizer step) on one batch."""

    def __init__(self, model: nn.Module, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
                 forward_loss: Callable[[nn.Module], torch.Tensor], device: torch.device, precision: str):
        self.model = copy.deepcopy(model).to(device).train()
        if precision in DTYPES:  # as MixedPrecision runs it: layers this machine cannot run in that type stay fp32
            keep_unsupported_in_fp32(self.model, device, DTYPES[precision])
        self.optimizer = make_optimizer(self.model)
        self.forward_loss = forward_loss
        self.autocast: Callable[[], AbstractContextManager] = lambda: autocast_for(device, precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.loss_sum = torch.zeros((), device=device)  # on device: no sync per step
        self.steps_taken = 0

    def steps(self, n: int) -> None:
        for _ in range(n):
            with self.autocast():
                loss = self.forward_loss(self.model)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.loss_sum += loss.detach().float()
            self.steps_taken += 1

    def loss(self) -> float | None:
        """Mean loss over every step taken (the same steps for every alternative that ran to the end): the area
        under its learning curve, where an overflow, a divergence or a stalled start all show."""
        return float(self.loss_sum) / self.steps_taken if self.steps_taken else None


def precision_trials(
    model: nn.Module,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    forward_loss: Callable[[nn.Module], torch.Tensor],
    device: torch.device,
    candidates: list[str],
    rounds: int | None = None,
) -> dict[str, Trial]:
    """Time each precision's training step on copies of ``model``; ``forward_loss(model)`` is one batch's mean loss."""
    with _untouched_rng(device):
        steppers = {p: _TrainSteps(model, make_optimizer, forward_loss, device, p) for p in candidates}
        return _race(steppers, device, rounds)


class _OptimizerSteps(_Stepper):
    """Optimizer steps alone, on copies of the parameters with fixed small gradients."""

    def __init__(self, params: list[nn.Parameter], grads: list[torch.Tensor], factory: OptimizerFactory):
        self.params = [nn.Parameter(p.detach().to(g.device, copy=True)) for p, g in zip(params, grads)]
        for p, g in zip(self.params, grads):
            p.grad = g.clone()
        self.optimizer = factory(self.params)

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.optimizer.step()


def optimizer_trials(
    model: nn.Module, factories: dict[str, OptimizerFactory], device: torch.device, rounds: int | None = None
) -> dict[str, Trial]:
    """Time each optimizer implementation's step over the model's trainable parameters.

    Only the step differs between them (the same Adam update, as a loop, a foreach or a fused kernel),
    so only the step is timed: forward and backward would add their noise and nothing else. Each kernel is judged
    warm only (its first step is not held against another's: a step costs a millisecond, so waiting is cheap).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)  # private: the run's random stream is not touched
    grads = [1e-3 * torch.randn(p.shape, generator=gen).to(device=device, dtype=p.dtype) for p in params]
    steppers = {name: _OptimizerSteps(params, grads, f) for name, f in factories.items()}
    return _race(steppers, device, rounds, judge_first_step=False)


def _untouched_rng(device: torch.device) -> AbstractContextManager:
    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


MAX_BATCH_STEP_S = 0.5  # a batch whose step takes this long ends the climb: larger ones only cost more to time


def batch_trials(
    model: nn.Module,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    forward_loss_at: Callable[[int], Callable[[nn.Module], torch.Tensor]],
    device: torch.device,
    candidates: list[int],
    precision: str,
    rounds: int | None = None,
) -> dict[int, Trial]:
    """Time a training step at each batch size of ``candidates`` (ascending), each on its own copy of ``model``;
    ``forward_loss_at(b)(model)`` is a batch of ``b``'s mean loss. The climb stops after the first batch whose step
    takes ``MAX_BATCH_STEP_S``: the rest would take longer still to time, for fewer steps per epoch."""
    trials: dict[int, Trial] = {}
    with _untouched_rng(device):
        for batch in sorted(candidates):
            stepper = _TrainSteps(model, make_optimizer, forward_loss_at(batch), device, precision)
            try:
                _, steady, _ = _warm_up(stepper, device, None)
            except RuntimeError as e:  # out of memory, most likely: no larger batch will fit either
                if not trials:
                    raise
                trials[batch] = Trial(skipped=f"failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
                break
            per_round = max(1, min(MAX_STEPS_PER_ROUND, math.ceil(ROUND_S / max(steady, 1e-6))))
            trial = Trial()
            for _ in range(ROUNDS if rounds is None else rounds):
                trial.ms_per_step.append(1e3 * _timed(stepper, device, per_round))
            trials[batch] = trial
            del stepper
            if steady >= MAX_BATCH_STEP_S:
                break
    return trials
