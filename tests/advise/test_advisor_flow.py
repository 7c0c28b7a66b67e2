"""The advisor's plan on a fake machine: every run's cost and result injected, the clock advanced by them. So the budget,
the greedy combination, the batch ladder and the repeats are tested exactly, whatever this machine is doing."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from leantrain.advice import advisor as advisor_module
from leantrain.advice.advisor import AdviseRequest, Advisor
from leantrain.advice.budget import Budget
from leantrain.advice.measure import Measurement
from leantrain.advice.screen import Screened
from leantrain.config import RunConfig
from leantrain.errors import UsageError

EPOCHS = 4
RUN_COST_S = 10.0  # every measured run takes this long on the fake clock


class FakeMachine:
    """Per-epoch seconds and the final accuracy of a recipe, by its settings; the clock moves as runs take time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.runs: list[tuple[str, int]] = []
        self.raced: list[tuple[str, int, bool]] = []
        self.behind: list[tuple[str, int, float | None]] = []  # the training time past which each run is stopped
        self.auto_choices: dict[str, dict[str, Any]] = {}  # an auto candidate's name -> what it chose when screened

    def epoch_s(self, config: RunConfig) -> float:
        s = 2.0
        s *= 0.5 if config.precision == "bf16" else 1.0
        s *= 0.8 if config.optimizer == "fused-adam" else 1.0
        batch = config.batch_size if isinstance(config.batch_size, int) else 64
        s *= 0.1 if batch >= 4096 else 0.15 if batch >= 1024 else 0.3 if batch >= 256 else 1.0
        s *= 1.3 if config.compile else 1.0
        return s

    def accuracy(self, config: RunConfig) -> list[float]:
        big = isinstance(config.batch_size, int) and config.batch_size >= 256
        if (big and config.schedule != "warmup-cosine") or (config.batch_size == 4096):
            return [0.60, 0.70, 0.74, 0.76]  # a bigger batch with a constant lr loses quality; 4096 loses it anyway
        return [0.70, 0.78, 0.80, 0.805]

    def measure(self, recipe: str, config: RunConfig, request_for: Any, guard: Any, runs_dir: Path) -> Measurement:
        self.runs.append((recipe, config.seed))
        self.behind.append((recipe, config.seed, guard.behind_s))
        self.now += RUN_COST_S
        epochs = [{"time_s": self.epoch_s(config), "val_acc": a, "activation_bytes": 1, "foreign_cpu_cores": 0.0}
                  for a in self.accuracy(config)]
        raced = False
        if guard.race:  # as the guard stops a race: at the first epoch that reaches the target
            reached = next((i for i, e in enumerate(epochs) if e["val_acc"] >= guard.target), None)
            raced = reached is not None and reached < len(epochs) - 1
            epochs = epochs[: reached + 1] if raced else epochs
        record = {"run": {"metric": "val_acc", "higher_is_better": True, "config": config.to_dict()}, "epochs": epochs,
                  "env": {}, "summary": {"final_val_acc": epochs[-1]["val_acc"],
                                         "train_time_s": sum(e["time_s"] for e in epochs), "peak_mem_bytes": 1}}
        self.raced.append((recipe, config.seed, raced))
        return Measurement(recipe, config.seed, record, RUN_COST_S, raced=raced)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeMachine:
    machine = FakeMachine()

    def screen(candidate: Any, baseline: dict[str, Any], request_for: Any) -> Screened:
        if candidate.not_applicable:
            return Screened(candidate, None, candidate.not_applicable)
        machine.now += 1.0
        config = RunConfig.from_dict(candidate.apply(baseline))
        return Screened(candidate, config, None, 1.0, machine.auto_choices.get(candidate.name, {}))

    monkeypatch.setattr(advisor_module, "screen", screen)
    monkeypatch.setattr(advisor_module, "measure", machine.measure)
    return machine


def advise(fake: FakeMachine, budget_s: float, only: tuple[str, ...], tmp_path: Path) -> Any:
    baseline = RunConfig.from_dict({"epochs": EPOCHS, "batch_size": 64, "lr": 1e-3}).to_dict()
    request = AdviseRequest(baseline, Budget(budget_s, lambda: fake.now), tmp_path, only=only, say=lambda line: None)
    return Advisor(request).run()


def test_winners_combined_and_the_budget_held(fake: FakeMachine, tmp_path: Path) -> None:
    findings = advise(fake, 400, ("precision", "optimizer", "compile"), tmp_path)
    recipes = [r for r, _ in fake.runs]
    assert "bf16 + fused Adam" in recipes  # the two winners, combined
    assert findings.advice.recommended is not None and findings.advice.recommended.recipe == "bf16 + fused Adam"
    assert fake.now <= 400 * 1.1
    assert "compile" in recipes and "compile" not in [r.recipe for r in findings.advice.rows[:1]]
    seeds = {seed for r, seed in fake.runs if r == "baseline"}
    assert len(seeds) >= 2  # repeated, the baseline first in each round
    per_seed = [r for r, seed in fake.runs if seed == max(seeds)]
    assert per_seed[0] == "baseline"
    # the first round races to the target; the repeats train every epoch, which is where quality is measured
    assert all(raced for recipe, seed, raced in fake.raced if seed == 0 and recipe != "baseline")
    assert not any(raced for recipe, seed, raced in fake.raced if seed > 0)
    # a race is stopped once clearly behind: past 1.5x the baseline's time to target (three epochs of 2 s) and 2 s
    # more at least; a repeat never is, nor the baseline
    assert {b for recipe, seed, b in fake.behind if seed == 0 and recipe != "baseline"} == {9.0}
    assert {b for recipe, seed, b in fake.behind if seed > 0 or recipe == "baseline"} == {None}
    best = findings.advice.recommended
    assert best.final is not None and any(not m.raced for m in best.measurements)


def test_a_raced_candidate_without_a_full_run_is_not_recommended(fake: FakeMachine, tmp_path: Path) -> None:
    findings = advise(fake, 40, ("precision",), tmp_path)  # the baseline and bf16's race, no repeat fits
    row = next(r for r in findings.advice.rows if r.recipe == "bf16")
    assert row.speedups and row.final is None and "final quality was not measured" in row.note
    assert findings.advice.recommended is None


def test_a_small_budget_lists_what_did_not_fit(fake: FakeMachine, tmp_path: Path) -> None:
    findings = advise(fake, 45, ("precision", "optimizer", "compile"), tmp_path)
    assert fake.now <= 45 * 1.1
    assert findings.not_fitted  # the candidates after the third run, and every repeat
    assert len(fake.runs) == 3  # 7 dry steps of 1 s, then the baseline and two candidates of 10 s: 37 s; a third would end at 47 s


def test_a_bigger_batch_that_lost_quality_gets_its_warmup(fake: FakeMachine, tmp_path: Path) -> None:
    findings = advise(fake, 600, ("batch_size", "schedule"), tmp_path)
    recipes = [r for r, _ in fake.runs]
    assert "batch 256 + warmup-cosine" in recipes
    assert findings.advice.recommended is not None
    assert findings.advice.recommended.recipe == "batch 256 + warmup-cosine"
    assert findings.combinations["batch 256 + warmup-cosine"] == {"batch_size": 256, "lr": pytest.approx(2e-3),
                                                                   "schedule": "warmup-cosine"}


def test_the_batch_ladder_climbs_with_the_schedule_while_it_wins(fake: FakeMachine, tmp_path: Path) -> None:
    # batch_size auto chose 4096: the ladder tries 256, 1024 and 4096, each with its lr and warmup-cosine, as one move
    # (alone, every bigger batch loses quality and warmup-cosine wins nothing); 4096 loses quality, 1024 is the answer.
    fake.auto_choices["batch_size auto"] = {"batch_size": 4096, "lr": 8e-3}
    findings = advise(fake, 900, ("batch_size", "schedule"), tmp_path)
    rungs = [r for r, seed in fake.runs if seed == 0 and r.endswith("+ warmup-cosine")]
    assert rungs == ["batch 256 + warmup-cosine", "batch 1024 + warmup-cosine", "batch 4096 + warmup-cosine"]
    assert findings.combinations["batch 1024 + warmup-cosine"] == {"batch_size": 1024, "lr": pytest.approx(4e-3),
                                                                    "schedule": "warmup-cosine"}
    assert findings.advice.recommended is not None
    assert findings.advice.recommended.recipe == "batch 1024 + warmup-cosine"


def test_the_ladder_stops_at_the_first_rung_that_loses(fake: FakeMachine, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    accuracy = fake.accuracy
    monkeypatch.setattr(fake, "accuracy", lambda config: [0.5, 0.55, 0.6, 0.62] if config.batch_size == 1024
                        else accuracy(config))
    fake.auto_choices["batch_size auto"] = {"batch_size": 4096, "lr": 8e-3}
    findings = advise(fake, 900, ("batch_size", "schedule"), tmp_path)
    assert "batch 4096 + warmup-cosine" not in [r for r, _ in fake.runs]  # 1024 lost: no bigger rung is tried
    assert findings.advice.recommended is not None
    assert findings.advice.recommended.recipe == "batch 256 + warmup-cosine"


def test_a_winner_that_costs_time_on_the_ladder_is_pruned(fake: FakeMachine, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # adaptive batching wins at batch 64 (0.9x the epoch) and is kept; at batch 1024 it costs 1.5x: left out again
    epoch_s = fake.epoch_s

    def with_adaptive(config: RunConfig) -> float:
        batch = config.batch_size if isinstance(config.batch_size, int) else 64
        factor = (0.9 if batch < 256 else 1.5 if batch >= 1024 else 1.0) if config.accumulation == "adaptive" else 1.0
        return epoch_s(config) * factor

    monkeypatch.setattr(fake, "epoch_s", with_adaptive)
    fake.auto_choices["batch_size auto"] = {"batch_size": 4096, "lr": 8e-3}
    findings = advise(fake, 1200, ("batch_size", "schedule", "accumulation"), tmp_path)
    recipes = [r for r, seed in fake.runs if seed == 0]
    assert "adaptive batching + batch 1024 + warmup-cosine" in recipes  # the ladder on top of the winner kept
    assert findings.advice.recommended is not None
    assert findings.advice.recommended.recipe == "batch 1024 + warmup-cosine"  # the winner left out again


def test_a_budget_too_small_for_the_baseline(fake: FakeMachine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def stopped(recipe: str, config: RunConfig, request_for: Any, guard: Any, runs_dir: Path) -> Measurement:
        fake.now += 30.0
        record = {"epochs": [{"time_s": 30.0}], "run": {}, "summary": {}}
        return Measurement(recipe, config.seed, record, 30.0, stopped="the budget ran out after epoch 1 of 4")

    monkeypatch.setattr(advisor_module, "measure", stopped)
    with pytest.raises(UsageError, match=r"too small: one baseline run takes about 2 min 00 s .* at least --budget 5m"):
        advise(fake, 40, ("precision",), tmp_path)


def test_a_short_race_gets_two_seconds_of_slack() -> None:
    # a baseline at its target in 0.8 s: a race is behind past 2.8 s, not 1.2 s (a hiccup on a busy machine)
    assert advisor_module.behind_after(0.8) == pytest.approx(2.8)
    assert advisor_module.behind_after(60.0) == pytest.approx(90.0)
