"""The decisions of leantrain advise, on injected measurements: what is recommended, and when to keep the recipe."""
from __future__ import annotations

from typing import Any

import pytest

from leantrain.advice.budget import Budget, parse_budget
from leantrain.advice.candidates import COVERS, GENERATORS, NOT_FOR_SPEED, Machine, candidates
from leantrain.advice.measure import Measurement
from leantrain.advice.recommend import BASELINE, Goal, judge
from leantrain.errors import UsageError
from leantrain.techniques.registry import techniques

GOAL = Goal("val_acc", True, 0.80)


def run(recipe: str, seed: int, epoch_times: list[float], accs: list[float], **kw: Any) -> Measurement:
    epochs = [{"time_s": t, "val_acc": a, "activation_bytes": 1000, "foreign_cpu_cores": 0.0}
              for t, a in zip(epoch_times, accs)]
    record = {"run": {"metric": "val_acc"}, "epochs": epochs,
              "summary": {"final_val_acc": accs[-1], "train_time_s": sum(epoch_times), "peak_mem_bytes": 2**20}}
    return Measurement(recipe, seed, record, sum(epoch_times) + 1.0, **kw)


def baseline(seed: int, scale: float = 1.0) -> Measurement:
    return run(BASELINE, seed, [scale * 2.0] * 4, [0.70, 0.78, 0.80, 0.805])


def test_a_clear_winner_is_recommended() -> None:
    ms = [baseline(0), baseline(1, 1.05),
          run("bf16", 0, [1.0] * 4, [0.70, 0.78, 0.80, 0.806]), run("bf16", 1, [1.1] * 4, [0.70, 0.78, 0.80, 0.804]),
          run("compile", 0, [1.9] * 4, [0.70, 0.78, 0.80, 0.805]), run("compile", 1, [2.2] * 4, [0.70, 0.78, 0.80, 0.805])]
    advice = judge(ms, GOAL)
    assert advice.recommended is not None and advice.recommended.recipe == "bf16"
    assert advice.recommended.speedups == pytest.approx([2.0, 2.1 / 1.1])
    assert [r.recipe for r in advice.rows][:1] == ["bf16"]
    # compile's 1.05x and 0.95x straddle 1: within the spread, not a winner
    assert "compile" not in [r.recipe for r in advice.rows if r is advice.recommended]


def test_nothing_beyond_the_spread_keeps_the_recipe() -> None:
    ms = [baseline(0), baseline(1, 1.2),
          run("fused Adam", 0, [1.9] * 4, [0.70, 0.78, 0.80, 0.805]),
          run("fused Adam", 1, [2.5] * 4, [0.70, 0.78, 0.80, 0.805])]
    advice = judge(ms, GOAL)
    assert advice.recommended is None
    assert "nothing beats the baseline beyond its spread" in advice.reason


def test_three_paired_seeds_all_faster_are_beyond_the_spread() -> None:
    # Seeds differ more than recipes (the baseline's time to target 1.5-3.0 s): unpaired, fused Adam's slowest (2.6 s)
    # is not below the baseline's fastest; paired, it is 1.15x faster on every seed.
    def seed_run(recipe: str, seed: int, scale: float) -> Measurement:
        return run(recipe, seed, [scale * (0.5 + 0.25 * seed)] * 4, [0.70, 0.78, 0.80, 0.805])
    ms = [m for seed in range(3) for m in (seed_run(BASELINE, seed, 1.0), seed_run("fused Adam", seed, 1 / 1.15))]
    advice = judge(ms, GOAL)
    assert advice.recommended is not None and advice.recommended.recipe == "fused Adam"
    two = [m for m in ms if m.seed < 2]  # two pairs: the unpaired check still applies
    assert judge(two, GOAL).recommended is None
    one_slower = [*ms[:-1], seed_run("fused Adam", 2, 1.02)]  # one pair of three not faster: within the spread
    assert judge(one_slower, GOAL).recommended is None


@pytest.mark.parametrize("pairs, slower, recommended", [(5, 1, False), (7, 1, True), (8, 2, False), (10, 2, True)])
def test_more_pairs_may_hold_a_slower_one(pairs: int, slower: int, recommended: bool) -> None:
    # A one-sided sign test at 1 in 8: 4 faster of 5 (chance 0.19 were it no faster) is not enough, 6 of 7 (0.06) is;
    # 6 of 8 (0.14) is not, 8 of 10 (0.05) is.
    ms = []
    for seed in range(pairs):
        scale = 1.02 if seed < slower else 1 / 1.15
        ms += [run(BASELINE, seed, [0.5] * 4, [0.70, 0.78, 0.80, 0.805]),
               run("fused Adam", seed, [0.5 * scale] * 4, [0.70, 0.78, 0.80, 0.805])]
    advice = judge(ms, GOAL)
    assert (advice.recommended is not None) is recommended


def test_one_repeat_needs_the_margin() -> None:
    just = [baseline(0), run("threads", 0, [1.9] * 4, [0.70, 0.78, 0.80, 0.805])]  # 1.05x from one run each
    assert judge(just, GOAL).recommended is None
    clear = [baseline(0), run("threads", 0, [1.5] * 4, [0.70, 0.78, 0.80, 0.805])]  # 1.33x
    assert judge(clear, GOAL).recommended is not None


def test_a_faster_recipe_that_loses_quality_is_not_recommended() -> None:
    ms = [baseline(0), run("batch 256", 0, [0.5, 0.5, 0.5, 0.5], [0.70, 0.78, 0.80, 0.79])]
    advice = judge(ms, Goal("val_acc", True, 0.78))  # it reaches the target fast, but ends 1.9% worse
    assert advice.recommended is None
    assert "outside the ±0.5% band" in advice.reason


def test_crashed_diverged_and_stopped_are_reported_never_recommended() -> None:
    ms = [baseline(0),
          Measurement("fp16", 0, None, 3.0, failure="TrainingDiverged: the loss is nan at step 3"),
          run("compile", 0, [0.1] * 4, [0.70, 0.78, 0.80, 0.805], failure="compile did nothing: no graph"),
          run("bf16", 0, [9.0], [0.5], stopped="behind: 9.0 s of training without reaching the target")]
    advice = judge(ms, GOAL)
    assert advice.recommended is None
    problems = {r.recipe: r.problem for r in advice.rows}
    assert problems["fp16"].startswith("failed: TrainingDiverged")
    assert problems["compile"].startswith("failed: compile did nothing")
    assert problems["bf16"].startswith("stopped: behind")


def test_targets_are_paired_by_seed() -> None:
    # seed 1's baseline ends lower: its own target, not seed 0's, decides when seed 1's candidate arrived
    goal = Goal("val_acc", True, 0.80, per_seed={0: 0.80, 1: 0.75})
    ms = [baseline(0), run(BASELINE, 1, [2.0] * 4, [0.70, 0.74, 0.75, 0.755]),
          run("bf16", 0, [1.0] * 4, [0.70, 0.78, 0.80, 0.806]), run("bf16", 1, [1.0] * 4, [0.70, 0.74, 0.75, 0.754])]
    row = next(r for r in judge(ms, goal).rows if r.recipe == "bf16")
    assert row.problem is None and row.times == [3.0, 3.0]


def test_equal_epochs_when_no_target() -> None:
    goal = Goal("val_acc", True, None, fallback="the baseline never reached 0.99")
    ms = [baseline(0), run("bf16", 0, [1.0] * 4, [0.70, 0.78, 0.80, 0.806])]
    advice = judge(ms, goal)
    assert advice.recommended is not None and advice.recommended.speedups == [2.0]


@pytest.mark.parametrize("text, seconds", [("15m", 900), ("90s", 90), ("1h30m", 5400), ("2.5m", 150), ("45", 45), (30, 30)])
def test_budgets(text: Any, seconds: float) -> None:
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "15 minutes", "m", "-5m", "0s", "1h30x"])
def test_malformed_budgets(text: str) -> None:
    with pytest.raises(UsageError, match="budget"):
        parse_budget(text)


def test_budget_clock() -> None:
    now = [100.0]
    budget = Budget(60, lambda: now[0])
    now[0] = 130.0
    assert budget.left == 30 and budget.fits(30) and not budget.fits(31)


def test_every_registered_technique_is_tried_or_said_why_not() -> None:
    covered = set(COVERS.values()) | set(NOT_FOR_SPEED)
    assert {t.name for t in techniques()} <= covered
    assert set(COVERS) <= set(GENERATORS)


def test_candidates_follow_the_baseline_and_the_machine() -> None:
    from leantrain.config import RunConfig

    base = RunConfig.from_dict({"batch_size": 64, "lr": 1e-3, "loader": "dataloader"}).to_dict()
    found = {c.name: c for c in candidates(base, Machine("cpu", 2))}
    assert found["batch 256"].changes == {"batch_size": 256, "lr": pytest.approx(2e-3)}  # Adam: lr by sqrt(4)
    assert found["fp16"].not_applicable and "GPU" in found["fp16"].not_applicable
    assert found["2 processes"].changes == {"parallel": "ddp", "procs": 2, "batch_size": 32, "threads": 1}
    assert "tensor batches" in found
    sgd = RunConfig.from_dict({"batch_size": 64, "lr": 0.1, "optimizer": "sgd", "loader": "tensor"}).to_dict()
    found = {c.name: c for c in candidates(sgd, Machine("cpu", 1))}
    assert found["batch 256"].changes["lr"] == pytest.approx(0.4)  # sgd: linear
    assert "tensor batches" not in found and "fused Adam" not in found
    assert found["2 processes"].not_applicable == "1 core(s): nothing to split over"
    assert found["trimmed padding"].changes == {"trim_padding": True}
    bucketed = RunConfig.from_dict({"batch_size": 64, "length_buckets": True}).to_dict()
    assert "trimmed padding" not in {c.name for c in candidates(bucketed, Machine("cpu", 2))}  # buckets trim already


def test_trimmed_padding_is_screened_out_of_data_without_padding_and_in_for_padded_sequences() -> None:
    from leantrain.advice.screen import screen
    from leantrain.config import RunConfig
    from leantrain.train.run import RunRequest

    def request_for(config):
        return RunRequest(config, quiet=True)

    trim = next(c for c in candidates(RunConfig().to_dict(), Machine("cpu", 2)) if c.name == "trimmed padding")
    images = RunConfig.from_dict({"model": "mlp", "data": "imagenet-sim:n=200", "epochs": 1}).to_dict()
    out = screen(trim, images, request_for)
    assert not out.applies and out.reason.startswith("trim_padding needs padded token sequences")
    lines = RunConfig.from_dict({"model": "seq2seq-transformer:d_model=16,heads=2,encoder_layers=1,decoder_layers=1,"
                                          "ff=32", "data": "polynomial:n=200", "epochs": 1}).to_dict()
    assert screen(trim, lines, request_for).applies
    # Batches so big that nearly every one holds a full-width row: trimming would save ~2%, not worth a race.
    out = screen(trim, {**lines, "data": "polynomial:n=2500", "batch_size": 1024}, request_for)
    assert not out.applies and "not worth a race" in out.reason and "of 1024" in out.reason


def test_the_guard_stops_inside_an_epoch() -> None:
    from types import SimpleNamespace

    from leantrain.advice.measure import RunStopped, StopWhenHopeless

    now = [0.0]
    state = SimpleNamespace(epoch=0, total_epochs=5)
    guard = StopWhenHopeless(Budget(100, lambda: now[0]), behind_s=10.0, target=0.8, metric="val_acc", higher=True)
    guard.on_fit_start(state)
    now[0] = 14.0
    guard.after_optimizer_step(state)  # 14 s of wall: within 1.5x of the 10 s the baseline needed
    now[0] = 16.0
    with pytest.raises(RunStopped, match="behind: still in epoch 1"):
        guard.after_optimizer_step(state)
    late = StopWhenHopeless(Budget(100, lambda: now[0]), behind_s=None, target=0.8, metric="val_acc", higher=True)
    late.on_fit_start(state)
    now[0] = 117.0
    with pytest.raises(RunStopped, match="the budget ran out in epoch 1 of 5"):
        late.after_optimizer_step(state)
    assert late.out_of_budget and not guard.out_of_budget


def test_a_run_past_the_target_is_never_behind() -> None:
    from types import SimpleNamespace

    from leantrain.advice.measure import StopWhenHopeless

    now = [0.0]
    state = SimpleNamespace(epoch=0, total_epochs=5, records=[], stop_training=False)
    guard = StopWhenHopeless(Budget(100, lambda: now[0]), behind_s=2.0, target=0.8, metric="val_acc", higher=True)
    guard.on_fit_start(state)
    now[0] = 1.0
    guard.on_epoch_end(state, {"time_s": 1.0, "val_acc": 0.85})  # reached in epoch 1; a full run trains on
    state.epoch, now[0] = 1, 30.0
    guard.after_optimizer_step(state)  # far past 1.5x the baseline's time to target: not behind, it got there
    assert not state.stop_training and guard.why is None
