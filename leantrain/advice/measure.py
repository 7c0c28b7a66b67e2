"""One measured run of a recipe: trained as ``leantrain train`` trains it, its record kept, its failure told in one line.

A run is stopped early, at an epoch's end, once it is clearly behind (its training time past ``behind_s``, the
baseline's time to target times a margin, without reaching the target) or once the rest of it would not fit in
the budget. Either way it is reported as stopped, never as a result.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leantrain.advice.budget import Budget
from leantrain.advice.screen import RequestFor, one_line
from leantrain.config import RunConfig
from leantrain.train.callbacks import Callback
from leantrain.train.record import time_to_target


@dataclass
class Measurement:
    recipe: str
    seed: int
    record: dict[str, Any] | None  # the run's JSON record (None when it failed before one)
    wall_s: float  # start to record, set-up included: what the budget pays
    failure: str | None = None  # crashed or diverged: why, in one line
    stopped: str | None = None  # stopped early: why
    raced: bool = False  # stopped on reaching the target: its time counts, its final metric was never reached

    @property
    def finished(self) -> bool:
        return self.record is not None and self.failure is None and self.stopped is None

    def final(self, metric: str) -> float | None:
        """The metric after every epoch; None for a raced run (it stopped at the target)."""
        return None if self.record is None or self.raced else self.record["summary"].get(f"final_{metric}")

    def time_to(self, metric: str, target: float | None, higher_is_better: bool) -> float | None:
        if self.record is None:
            return None
        return time_to_target(self.record["epochs"], metric, target, higher_is_better)

    @property
    def train_s(self) -> float | None:
        return None if self.record is None else float(self.record["summary"]["train_time_s"])


WALL_PER_TRAINING = 1.5  # mid-epoch, wall seconds since the fit started stand for this much more than training time


class RunStopped(Exception):
    """Raised by the guard inside an epoch to end a run that is clearly behind or out of budget."""


class StopWhenHopeless(Callback):
    """Stops a run at an epoch's end when it is clearly behind, when its remaining epochs would overrun the budget, or
    (``race``) as soon as it reaches the target: its time to target is then known, and the rest would only measure
    its final quality, which the repeats measure for the contenders."""

    def __init__(self, budget: Budget, behind_s: float | None, target: float | None, metric: str, higher: bool,
                 race: bool = False):
        self.budget, self.behind_s, self.target, self.metric, self.higher = budget, behind_s, target, metric, higher
        self.race = race
        self.why: str | None = None
        self.out_of_budget = False  # stopped for the budget's sake, not the run's: not a finding about the recipe
        self.raced = self.reached = False
        self.started = self.fit_started = budget.now()

    def on_epoch_end(self, state: Any, record: dict[str, Any]) -> None:
        records = [*state.records, record]  # the loop appends this epoch's record after this event
        trained = sum(r["time_s"] for r in records)
        reached = time_to_target(records, self.metric, self.target, self.higher) is not None
        self.reached = self.reached or reached  # past the target, a run is never behind (a repeat trains on)
        left = state.total_epochs - len(records)
        if left <= 0:
            return
        if self.race and reached:
            self.raced = state.stop_training = True
        elif self.behind_s is not None and trained > self.behind_s and not reached:
            self.why = f"behind: {trained:.1f} s of training without reaching the target (the baseline needed less)"
        elif not self.budget.fits(self._rest(records, left, trained)):
            self.why = f"the budget ran out after epoch {len(records)} of {state.total_epochs}"
            self.out_of_budget = True
        if self.why:
            state.stop_training = True

    def on_fit_start(self, state: Any) -> None:
        self.fit_started = self.budget.now()

    def after_optimizer_step(self, state: Any) -> None:
        """Within an epoch too: one slow epoch (bf16 emulated on an AVX2 CPU) must not overrun the budget. Training
        time is not known before the epoch's end, so the wall time since the fit started stands for it, with room for
        the validations in it."""
        if self.budget.left < 0:
            self.out_of_budget = True
            raise RunStopped(f"the budget ran out in epoch {state.epoch + 1} of {state.total_epochs}")
        wall = self.budget.now() - self.fit_started
        if self.behind_s is not None and not self.reached and wall > WALL_PER_TRAINING * self.behind_s:
            raise RunStopped(f"behind: still in epoch {state.epoch + 1} after {wall:.1f} s without reaching the target "
                             f"(a race is behind past {self.behind_s:.1f} s of training)")

    def _rest(self, records: list[dict[str, Any]], left: int, trained: float) -> float:
        """The wall time the rest of the run is expected to take: its epochs so far (compilation, a one-off, left out),
        or, where it will be stopped as behind first, until then."""
        once = sum((r.get("compile_s") or 0.0) + (r.get("val_compile_s") or 0.0) for r in records)
        per_epoch = max(0.0, self.budget.now() - self.started - once) / len(records)
        rest = left * per_epoch
        if self.behind_s is not None and trained > 0:
            rest = min(rest, max(0.0, self.behind_s - trained) * per_epoch * len(records) / trained + per_epoch)
        return rest

    def describe(self) -> str:
        return "advise-guard"


def measure(recipe: str, config: RunConfig, request_for: RequestFor, guard: StopWhenHopeless | None,
            runs_dir: Path) -> Measurement:
    """Train ``config`` once (launched as workers where it has several processes); never raises for the run's sake."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            record = _launched(config, runs_dir) if config.procs is not None else _here(config, request_for, guard)
    except RunStopped as halted:
        return Measurement(recipe, config.seed, None, time.perf_counter() - start, stopped=str(halted))
    except Exception as error:  # noqa: BLE001  (a crash or divergence is a finding, reported, never recommended)
        return Measurement(recipe, config.seed, None, time.perf_counter() - start, failure=one_line(error))
    wall = time.perf_counter() - start
    record = {**record, "advise": {"recipe": recipe, "warnings": sorted({str(w.message).splitlines()[0] for w in caught})}}
    (runs_dir / f"{config.run_name}.json").write_text(json.dumps(record, indent=1, default=str))
    failure = _did_nothing(record)
    stopped = guard.why if guard is not None else None
    return Measurement(recipe, config.seed, record, wall, failure=failure, stopped=stopped,
                       raced=guard is not None and guard.raced)


def _here(config: RunConfig, request_for: RequestFor, guard: StopWhenHopeless | None) -> dict[str, Any]:
    from leantrain.train.run import Run

    request = request_for(config)
    request.quiet = True
    if guard is not None:
        request.techniques = [*request.techniques, guard]
    return dict(Run(request).execute())


def _launched(config: RunConfig, runs_dir: Path) -> dict[str, Any]:
    from leantrain.train.worker import launch

    launch(config, runs_dir, resume=False, quiet=True, force=True, extra_run_fields={})
    return dict(json.loads((runs_dir / f"{config.run_name}.json").read_text()))


def _did_nothing(record: dict[str, Any]) -> str | None:
    """A switch that did nothing is a failure of the candidate, not a measurement of it (compile that traced nothing)."""
    config = record["run"].get("config", {})
    if config.get("compile") and not all(e.get("compiled") for e in record["epochs"]):
        why = next((e.get("compile_error") for e in record["epochs"] if e.get("compile_error")), "nothing compiled")
        return f"compile did nothing: {why}"
    return None

