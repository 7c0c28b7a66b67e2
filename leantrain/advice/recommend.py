"""From measurements to advice: a ranked table and one recommendation, or "keep your recipe".

Pure: it reads measurements and decides, so a decision is tested with injected timings. The rules:

- time to target is the baseline's (training seconds until the first epoch whose metric reaches the baseline's final
  metric less the tolerance, as the default experiment measures it); speed-ups are paired by seed;
- quality is the final metric's difference from the baseline's, judged in seed 001's ±0.5% band (being better is
  never a problem);
- a recipe is recommended only if it beats the baseline beyond the spread: with ``SIGN_TEST_PAIRS`` or more seeds
  paired with the baseline's, by a one-sided sign test (were it no faster, as many of its pairs would be faster with
  chance at most ``SIGN_TEST_ALPHA``: 3 of 3, 4 of 4, 5 of 6, 6 of 7, 7 of 8, 8 of 10); with two, both are faster and
  its slowest time is below the baseline's fastest as well; with one, by at least ``SINGLE_RUN_MARGIN`` (said in the
  advice). Seeds reach the target in different epochs, so times differ more between seeds than between recipes on
  one seed: pairs are the measure;
- a recipe that crashed, diverged, did nothing (a compile that traced no graph), was stopped, or never reached the
  target is reported with why, and never recommended.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from leantrain.advice.measure import Measurement
from leantrain.experiments.quality import QualityDelta, quality_delta
from leantrain.train.metrics import NOISY_FOREIGN_CORES

SINGLE_RUN_MARGIN = 0.10  # one measurement each: a speed-up under 1.10× is within what one repeat can tell
SIGN_TEST_PAIRS = 3  # from this many paired seeds, the sign test decides (3 of 3 faster: chance 1 in 8)
SIGN_TEST_ALPHA = 0.125  # the chance, were a recipe no faster, of as many faster pairs as it had, at most
BASELINE = "baseline"


@dataclass(frozen=True)
class Goal:
    """What the recipes are judged on."""

    metric: str
    higher_is_better: bool
    target: float | None  # None: no target reached by the baseline; recipes compared on equal epochs' training time
    fallback: str | None = None  # why time to target fell back to equal epochs
    per_seed: dict[int, float] = field(default_factory=dict)  # the baseline's own final less the tolerance, per seed

    def target_for(self, seed: int) -> float | None:
        """A repeat's target: the same seed's baseline's (paired, so seed-to-seed quality noise cancels), else the
        first's."""
        return self.per_seed.get(seed, self.target) if self.target is not None else None

    def time(self, m: Measurement) -> float | None:
        """The measurement's time to target, or on equal epochs its training time."""
        if self.target is None:
            return m.train_s
        return m.time_to(self.metric, self.target_for(m.seed), self.higher_is_better)


@dataclass
class Row:
    recipe: str
    measurements: list[Measurement]
    times: list[float] = field(default_factory=list)  # time to target (or training time, on equal epochs) per repeat
    speedups: list[float] = field(default_factory=list)  # paired by seed against the baseline
    final: float | None = None  # median final metric
    quality: QualityDelta | None = None
    peak_mem: float | None = None  # median bytes
    activation_mem: float | None = None
    noisy: int = 0  # repeats with other processes busy beside them
    problem: str | None = None  # why it cannot be recommended (crashed, stopped, target not reached, ...)
    note: str | None = None  # what the reader should know that is not a problem

    @property
    def repeats(self) -> int:
        return len(self.measurements)

    @property
    def speedup(self) -> float | None:
        return statistics.median(self.speedups) if self.speedups else None


@dataclass(frozen=True)
class Advice:
    rows: list[Row]  # ranked: recommendable by speed-up first, then the rest, baseline included
    recommended: Row | None  # None: keep your recipe
    reason: str  # one sentence: why this recipe, or why none


def judge(measurements: list[Measurement], goal: Goal) -> Advice:
    by_recipe: dict[str, list[Measurement]] = {}
    for m in measurements:
        by_recipe.setdefault(m.recipe, []).append(m)
    base = _row(BASELINE, by_recipe.get(BASELINE, []), goal, None)
    rows = [base] + [_row(name, ms, goal, base) for name, ms in by_recipe.items() if name != BASELINE]
    winners = sorted((r for r in rows[1:] if beats(r, base)), key=lambda r: -(r.speedup or 0.0))
    rest = sorted((r for r in rows if r not in winners), key=_rank_key)
    if winners:
        best = winners[0]
        reason = (f"{best.recipe}: {best.speedup:.2f}× the baseline's speed to target, quality within the band "
                  f"({best.quality.render() if best.quality else 'n/a'})")
        return Advice(winners + rest, best, reason)
    return Advice(rest, None, _why_keep(rows[1:]))


def _rank_key(row: Row) -> tuple[int, float]:
    return (0 if row.recipe == BASELINE else 1 if row.problem is None else 2, -(row.speedup or 0.0))


def _row(recipe: str, ms: list[Measurement], goal: Goal, base: Row | None) -> Row:
    row = Row(recipe, ms)
    done = [m for m in ms if m.finished]
    row.problem = _problem(ms, done)
    for m in done:
        t = goal.time(m)
        if t is None:
            row.problem = row.problem or "did not reach the target"
        else:
            row.times.append(t)
    finals = [f for f in (m.final(goal.metric) for m in done) if f is not None]
    row.final = statistics.median(finals) if finals else None
    if not finals and row.problem is None and any(m.raced for m in done):
        row.note = "stopped on reaching the target: its final quality was not measured (no full run fitted)"
    records = [m.record for m in ms if m.record is not None]
    peaks = [r["summary"]["peak_mem_bytes"] for r in records if r["summary"].get("peak_mem_bytes")]
    activations = [max((e.get("activation_bytes") or 0) for e in r["epochs"]) for r in records if r["epochs"]]
    row.peak_mem = statistics.median(peaks) if peaks else None
    row.activation_mem = statistics.median(activations) if activations else None
    row.noisy = sum(1 for r in records if any((e.get("foreign_cpu_cores") or 0) > NOISY_FOREIGN_CORES for e in r["epochs"]))
    if base is not None:
        row.speedups = _paired(base, row, goal)
        if row.final is not None and base.final is not None:
            row.quality = quality_delta(row.final, base.final, goal.higher_is_better)
    return row


def _problem(ms: list[Measurement], done: list[Measurement]) -> str | None:
    for m in ms:
        if m.failure:
            return f"failed: {m.failure}"
    for m in ms:
        if m.stopped:
            return f"stopped: {m.stopped}"
    return None if done else "not measured"


def _paired(base: Row, row: Row, goal: Goal) -> list[float]:
    def times(r: Row) -> dict[int, float]:
        out = {}
        for m in r.measurements:
            if m.finished:
                t = goal.time(m)
                if t:
                    out[m.seed] = t
        return out

    mine, theirs = times(row), times(base)
    return [theirs[seed] / t for seed, t in mine.items() if seed in theirs]


def beats(row: Row, base: Row) -> bool:
    """Faster than the baseline beyond the spread, in the quality band (measured by a full run), with nothing wrong."""
    return row.final is not None and faster(row, base)


def faster(row: Row, base: Row) -> bool:
    """Faster than the baseline beyond the spread, nothing wrong, and no quality loss measured (a raced run's final
    quality is not known yet: the greedy combination goes on speed, the recommendation waits for a full run)."""
    if row.problem or not row.speedups or not base.times:
        return False
    if row.quality is not None and not row.quality.within_band and row.quality.direction == "worse":
        return False
    if len(row.speedups) >= SIGN_TEST_PAIRS:
        return sign_test(sum(s > 1.0 for s in row.speedups), len(row.speedups)) <= SIGN_TEST_ALPHA
    if len(row.times) >= 2 and len(base.times) >= 2:
        return min(row.speedups) > 1.0 and max(row.times) < min(base.times)
    return (row.speedup or 0.0) >= 1.0 + SINGLE_RUN_MARGIN


def sign_test(wins: int, pairs: int) -> float:
    """The chance of ``wins`` or more faster pairs of ``pairs`` were the recipe no faster (each pair a coin toss)."""
    return sum(math.comb(pairs, k) for k in range(wins, pairs + 1)) / 2**pairs


def _why_keep(rows: list[Row]) -> str:
    ok = [r for r in rows if r.problem is None and r.speedup is not None]
    if not ok:
        told = [f"{r.recipe} {r.problem}" for r in rows if r.problem]
        return "no candidate finished with a result to compare" + (f" ({'; '.join(told[:3])})" if told else "")
    best = max(ok, key=lambda r: r.speedup or 0.0)
    if best.quality is not None and not best.quality.within_band and best.quality.direction == "worse":
        return f"the fastest candidate ({best.recipe}, {best.speedup:.2f}×) loses quality outside the ±0.5% band"
    return f"nothing beats the baseline beyond its spread (the best, {best.recipe}, {best.speedup:.2f}×)"
