"""``leantrain advise`` start to finish: screen, measure within the budget, combine the winners, judge, write.

    screening      every candidate (and auto setting) for one dry step; what does not apply, with why
    baseline       the user's recipe, once: its final metric sets the target, its wall time the cost of a run
    round 1        each applicable candidate once, the baseline's seed, stopped early when clearly behind
    combination    the winners added one at a time (greedy), each kept only if it beats the last
    batch ladder   on top of them, the batch ×4 a rung with its lr rule and warmup-cosine, while it keeps winning
    pruning        each member of the fastest combination left out in turn, kept out where that is faster
    repeats        further seeds, interleaved (baseline, then the contenders), while the budget holds
    the answer     the ranked table, the recommendation, the recipe to keep (report.py, recipe.py)

A run starts only if its expected cost fits in what is left of the budget; what did not fit is listed.
Every ``auto`` choice is made once (``tuning.decided_once``) and reused by every repeat.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leantrain.advice.budget import Budget, render_seconds
from leantrain.advice.candidates import Candidate, Machine, candidates
from leantrain.advice.candidates import batch as batch_candidate
from leantrain.advice.measure import Measurement, StopWhenHopeless, measure
from leantrain.advice.recommend import BASELINE, Advice, Goal, faster, judge
from leantrain.advice.screen import Screened, auto_candidates, concrete, one_line, screen
from leantrain.config import RunConfig, resolve_device
from leantrain.data.dataset import Dataset
from leantrain.errors import UsageError
from leantrain.machine import usable_cpus
from leantrain.train.run import RunRequest

BEHIND_MARGIN = 1.5  # a candidate past 1.5x the baseline's time to target without reaching it is stopped
BEHIND_SLACK_S = 2.0  # ... and past 2 s more than it: a hiccup on a busy machine is not being clearly behind
DEFAULT_TOLERANCE = 0.005  # the target: the baseline's final metric less this (experiments' baseline-final)
MAX_COMBINED = 8  # winners added greedily, at most (each one race)
LADDER_STEP = 4  # the batch ladder's rungs: the user's batch ×4, ×16, ...
SCREENING_SHARE = 0.25  # of the budget, at most, for the dry steps: the rest is for measuring
MAX_REPEATS = 10  # seeds per recipe, at most: the sign test decides with 8 of 10 faster; beyond, little is gained


@dataclass
class AdviseRequest:
    baseline: dict[str, Any]  # the user's recipe, RunConfig.to_dict()
    budget: Budget
    runs_dir: Path  # each measured run's record goes here
    target: float | None = None  # the user's target; None: the baseline's final metric less the tolerance
    tolerance: float = DEFAULT_TOLERANCE
    model_factory: Callable[[], nn.Module] | None = None  # lt.advise: the user's model, built afresh per run
    dataset: Dataset | None = None  # lt.advise: the user's data
    only: tuple[str, ...] = ()  # try only these techniques (candidates.GENERATORS' names); () tries every one
    say: Callable[[str], None] = lambda line: print(f"leantrain advise: {line}", file=sys.stderr, flush=True)


@dataclass
class Findings:
    """What the advice is made of: screening, measurements, the judgement, what the budget left out."""

    screened: list[Screened]
    measurements: list[Measurement]
    goal: Goal
    advice: Advice
    not_fitted: list[str] = field(default_factory=list)
    combinations: dict[str, dict[str, Any]] = field(default_factory=dict)  # combined recipe -> its changes
    budget_s: float = 0.0
    spent_s: float = 0.0

    def changes_of(self, recipe: str) -> dict[str, Any]:
        if recipe in self.combinations:
            return self.combinations[recipe]
        return next((s.candidate.changes for s in self.screened if s.candidate.name == recipe), {})


class Advisor:
    def __init__(self, request: AdviseRequest):
        self.request, self.budget, self.say = request, request.budget, request.say
        self.baseline = RunConfig.from_dict(request.baseline, where="baseline").validated("baseline")
        self._datasets: dict[int, Dataset] = {}
        self.measurements: list[Measurement] = []
        self.not_fitted: list[str] = []
        self.combinations: dict[str, dict[str, Any]] = {}

    # -- the runs' inputs --------------------------------------------------------------------------------------
    def request_for(self, config: RunConfig) -> RunRequest:
        """A fresh run of ``config``: its seed's data set (loaded once), the user's model built afresh and seeded."""
        model = None
        if self.request.model_factory is not None:
            torch.manual_seed(config.seed)
            model = self.request.model_factory()
        return RunRequest(config, model=model, dataset=self._dataset(config.seed), quiet=True)

    def _dataset(self, seed: int) -> Dataset:
        if self.request.dataset is not None:
            return self.request.dataset
        if seed not in self._datasets:
            from leantrain import data as data_sets

            self._datasets[seed] = data_sets.load(self.baseline.data, seed=seed)
        return self._datasets[seed]

    # -- the phases ---------------------------------------------------------------------------------------------
    def run(self) -> Findings:
        from leantrain.tuning import decided_once

        with decided_once():
            screened = self.screen_all()
            first, goal = self.measure_baseline()
            usable = [s for s in screened if s.applies]
            self.round(usable, seed=self.baseline.seed, goal=goal, base=first)
            self.combine(usable, goal, first)
            self.repeat(usable, goal, first)
        advice = judge(self.measurements, goal)
        return Findings(screened, self.measurements, goal, advice, self.not_fitted, self.combinations,
                        self.budget.seconds, self.budget.spent)

    def screen_all(self) -> list[Screened]:
        """The baseline must take a dry step (else the advice has nothing to stand on); then every candidate."""
        base = self.baseline.to_dict()
        own = screen(Candidate(BASELINE, BASELINE, {}, "your recipe"), base, self.request_for)
        if not own.applies:
            raise UsageError(f"your recipe does not train: {own.reason}")
        machine = Machine(resolve_device(self.baseline.device).type, len(usable_cpus()))
        found = candidates(base, machine)
        found += auto_candidates(base, found)
        if self.request.only:
            found = [c for c in found if c.technique in self.request.only]
        self.say(f"screening {len(found)} candidates for one dry step each")
        screened = []
        for c in found:  # the auto settings last: their probes take longest, and they only choose among the above
            if self.budget.spent > SCREENING_SHARE * self.budget.seconds:
                screened.append(Screened(c, None, f"not screened: screening may take {SCREENING_SHARE:.0%} of the "
                                                  "budget, and had"))
                continue
            s = screen(c, base, self.request_for)
            screened.append(s)
            verdict = f"applies{_chose(s)}" if s.applies else f"not applicable ({s.reason})"
            self.say(f"  {c.name}: {verdict} [{render_seconds(s.seconds)}]")
        return self._with_auto_choices(screened)

    def _with_auto_choices(self, screened: list[Screened]) -> list[Screened]:
        """An auto setting is measured as the concrete values it chose (what a user keeps), unless those are the
        user's own or a candidate tries them already."""
        tried = [s.candidate for s in screened if not s.chose]
        out = []
        for s in screened:
            if s.chose and s.applies:
                values = concrete(s)
                same = next((t.name for t in tried if _same(values, t.changes) and _same(t.changes, values)), None)
                if same or _same(values, self.request.baseline):
                    why = f"measured as {same}" if same else "your own setting"
                    out.append(Screened(s.candidate, None, f"it chose {_values(s.chose)}: {why}", s.seconds, s.chose))
                    continue
                candidate = Candidate(f"{s.candidate.name} ({_values(s.chose)})", s.candidate.technique, values,
                                      s.candidate.what)
                config = RunConfig.from_dict({**self.request.baseline, **values}, where=candidate.name)
                s = Screened(candidate, config, None, s.seconds, s.chose)
            out.append(s)
        return out

    def measure_baseline(self) -> tuple[Measurement, Goal]:
        config = self._measured_config(BASELINE, self.baseline, self.baseline.seed)
        spent_before = self.budget.spent
        guard = StopWhenHopeless(self.budget, None, None, "", True)
        self.say(f"baseline: {self.baseline.epochs} epochs")
        first = measure(BASELINE, config, self.request_for, guard, self.request.runs_dir)
        if first.stopped:
            raise UsageError(self._budget_too_small(first, spent_before))
        if first.failure or first.record is None:
            raise UsageError(f"your recipe failed when measured: {first.failure}")
        self.measurements.append(first)
        self.say(f"baseline: {render_seconds(first.wall_s)}")
        return first, self._goal(first)

    def _budget_too_small(self, stopped: Measurement, spent_before: float) -> str:
        record = stopped.record or {"epochs": []}
        done = max(1, len(record["epochs"]))
        projected = stopped.wall_s / done * self.baseline.epochs
        minimum = spent_before + 2 * projected  # the screening, the baseline and one candidate
        return (f"budget {render_seconds(self.budget.seconds)} is too small: one baseline run takes about "
                f"{render_seconds(projected)} here, and the advice needs it and at least one candidate; give at "
                f"least --budget {int(minimum // 60) + 1}m (or fewer --epochs)")

    def _goal(self, first: Measurement) -> Goal:
        record = first.record or {}
        metric, higher = record["run"]["metric"], bool(record["run"].get("higher_is_better", True))
        final = first.final(metric)
        target = self.request.target
        if target is None and final is not None:
            target = final - self.request.tolerance if higher else final + self.request.tolerance
        if target is not None and first.time_to(metric, target, higher) is None:
            return Goal(metric, higher, None, f"the baseline never reached {metric} {target:g}: recipes are compared "
                                              f"on equal epochs (training time to the last epoch) instead")
        goal = Goal(metric, higher, target)
        self._baseline_measured(goal, first)
        return goal

    def _baseline_measured(self, goal: Goal, m: Measurement) -> None:
        """Without a target of the user's, each seed's target is that seed's baseline's final less the tolerance."""
        final = m.final(goal.metric)
        if self.request.target is None and goal.target is not None and final is not None and m.finished:
            goal.per_seed[m.seed] = final - self.request.tolerance if goal.higher_is_better else final + self.request.tolerance

    def _measured_config(self, recipe: str, config: RunConfig, seed: int) -> RunConfig:
        # The memory check ran in the screening: measured runs skip its second dry step.
        slug = "".join(c if c.isalnum() else "-" for c in recipe.lower()).strip("-")
        return config.replace(seed=seed, memory_check=False, name=f"{slug}-s{seed}")

    def _expected(self, base: Measurement, config: RunConfig, goal: Goal, race: bool) -> float:
        """A run's expected wall time: the baseline's, or for a race its set-up and validation plus the longest it may
        train (``behind_after`` the baseline's time to target); launched workers start their own processes, about as long again."""
        cost = base.wall_s
        base_time, trained = goal.time(base), base.train_s
        if race and base_time is not None and trained is not None:
            cost = min(cost, max(0.0, base.wall_s - trained) + behind_after(base_time))
        return cost * (2.0 if config.procs is not None else 1.0)

    def _run_one(self, recipe: str, config: RunConfig, seed: int, goal: Goal, base: Measurement,
                 race: bool = False) -> Measurement | None:
        measured = self._measured_config(recipe, config, seed)
        if not self.budget.fits(self._expected(base, measured, goal, race)):
            self.not_fitted.append(f"{recipe} (seed {seed})")
            return None
        base_time = goal.time(base)
        # Only a race is stopped as behind: the reference runs on, and a repeat trains every epoch (its final quality).
        behind = behind_after(base_time) if race and base_time is not None and recipe != BASELINE else None
        guard = StopWhenHopeless(self.budget, behind, goal.target_for(seed),
                                 goal.metric, goal.higher_is_better, race=race and goal.target is not None)
        m = measure(recipe, measured, self.request_for, guard, self.request.runs_dir)
        if guard.out_of_budget:  # the budget's doing, not the recipe's: listed, never judged
            self.not_fitted.append(f"{recipe} (seed {seed}): {m.stopped}")
            self.say(f"{recipe} (seed {seed}): {m.stopped}")
            return None
        self.measurements.append(m)
        if recipe == BASELINE:
            self._baseline_measured(goal, m)
        status = m.failure or m.stopped or (f"{render_seconds(m.wall_s)}" + (", raced to the target" if m.raced else ""))
        self.say(f"{recipe} (seed {seed}): {status}")
        return m

    def round(self, usable: list[Screened], seed: int, goal: Goal, base: Measurement) -> None:
        for s in usable:
            assert s.config is not None
            self._run_one(s.candidate.name, s.config, seed, goal, base, race=True)

    def combine(self, usable: list[Screened], goal: Goal, base: Measurement) -> None:
        """Greedy: start from the fastest winner, add the next while the combination beats the last one kept; then
        climb the batch ladder on top of what was kept (``climb``)."""
        advice = judge(self.measurements, goal)
        by_name = {s.candidate.name: s.candidate for s in usable}
        rows = {r.recipe: r for r in advice.rows}
        winners = sorted((r.recipe for r in advice.rows if r.recipe in by_name and _is_winner(r, advice)),
                         key=lambda name: -(rows[name].speedup or 0.0))
        kept = [by_name[winners[0]]] if winners else []
        for name in winners[1:MAX_COMBINED + 1]:
            if set(by_name[name].changes) & set(_changes(kept)):
                continue  # two values for one setting (two Adam kernels): not a combination
            trial = [*kept, by_name[name]]
            if self._combination(trial, goal, base) is None:
                if _name(trial) in self.combinations:
                    return  # it did not fit in the budget: nor will the next
                continue  # not a valid recipe (said)
            if self._beats(_name(trial), _name(kept), goal):
                kept = trial
        self.prune(self.climb(usable, goal, base, kept), goal, base)

    def climb(self, usable: list[Screened], goal: Goal, base: Measurement, kept: list[Candidate]) -> list[Candidate]:
        """The batch ladder, on top of the winners kept: the batch ×4 a rung up to the largest a candidate tries
        (batch_size auto's choice), its lr scaled by the rule, with warmup-cosine where the user's lr is constant.
        A bigger batch alone often loses quality and a schedule alone wins little; together they are what
        large-batch training needs (Goyal et al. 2017), so each rung is one move. It climbs while each rung wins and
        beats the rung below. Returns the fastest of the kept combination and the rungs."""
        rest = [c for c in kept if c.technique not in ("batch_size", "schedule")]
        if "batch_size" in _changes(rest):
            return kept  # the batch is split over processes there: the ladder climbs one process's batch
        schedule = [s.candidate for s in usable if s.candidate.technique == "schedule"][:1]
        best, below = kept, None
        for size in self._rungs(usable):
            trial = [*rest, batch_candidate(self.request.baseline, size), *schedule]
            if not self._tried(trial, goal, base):
                break  # it did not fit in the budget (or is not a valid recipe): nor will a bigger one
            advice = judge(self.measurements, goal)
            row = next(r for r in advice.rows if r.recipe == _name(trial))
            if not _is_winner(row, advice) or (below is not None and (row.speedup or 0.0) <= below):
                break  # a bigger batch still will not do better
            below = row.speedup
            if not best or self._beats(_name(trial), _name(best), goal):
                best = trial
        return best

    def prune(self, best: list[Candidate], goal: Goal, base: Measurement) -> None:
        """Each member of the best combination left out in turn, kept out where the rest is faster without it: a
        winner added early (at batch 64) may cost time once the ladder has changed the batch."""
        for member in [c for c in best if c.technique not in ("batch_size", "schedule")]:
            trial = [c for c in best if c is not member]
            if len(best) < 2 or not self._tried(trial, goal, base):
                return
            if self._beats(_name(trial), _name(best), goal):
                best = trial

    def _tried(self, trial: list[Candidate], goal: Goal, base: Measurement) -> bool:
        """Whether ``trial`` has been measured, racing it now if not (False: it did not fit, or is not valid)."""
        return any(m.recipe == _name(trial) for m in self.measurements) or \
            self._combination(trial, goal, base) is not None

    def _rungs(self, usable: list[Screened]) -> list[int]:
        """The ladder's batch sizes: the user's ×4, ×16, ... below the largest batch a candidate tries, then that."""
        start = self.baseline.batch_size
        tried = [c.changes["batch_size"] for c in (s.candidate for s in usable)
                 if c.technique == "batch_size" and isinstance(c.changes.get("batch_size"), int)]
        if not isinstance(start, int) or not tried or max(tried) <= start:
            return []
        sizes = [start * LADDER_STEP]
        while sizes[-1] * LADDER_STEP < max(tried):
            sizes.append(sizes[-1] * LADDER_STEP)
        return [size for size in sizes if size < max(tried)] + [max(tried)]

    def _beats(self, recipe: str, than: str, goal: Goal) -> bool:
        """Whether ``recipe`` beats the baseline and is faster than ``than`` (the combination it grew from)."""
        advice = judge(self.measurements, goal)
        rows = {r.recipe: r for r in advice.rows}
        return _is_winner(rows[recipe], advice) and (rows[recipe].speedup or 0.0) > (rows[than].speedup or 0.0)

    def _combination(self, trial: list[Candidate], goal: Goal, base: Measurement) -> Measurement | None:
        name, changes = _name(trial), _changes(trial)
        try:
            config = RunConfig.from_dict({**self.baseline.to_dict(), **changes}, where=name).validated()
        except UsageError as e:
            self.say(f"{name}: not combined ({one_line(e)})")
            return None
        self.combinations[name] = changes
        return self._run_one(name, config, self.baseline.seed, goal, base, race=True)

    def repeat(self, usable: list[Screened], goal: Goal, base: Measurement) -> None:
        """Further seeds, all epochs (their final quality measured), while a whole round fits: the baseline first,
        then the fastest candidates so far (at most three)."""
        seed = self.baseline.seed
        while seed < self.baseline.seed + MAX_REPEATS - 1:
            seed += 1
            advice = judge(self.measurements, goal)
            contenders = [r.recipe for r in advice.rows
                          if r.recipe != BASELINE and r.problem is None and (r.speedup or 0.0) > 1.0][:3]
            if not contenders:
                return  # nothing left worth a repeat
            configs = {**{s.candidate.name: s.config for s in usable},
                       **{n: RunConfig.from_dict({**self.baseline.to_dict(), **c}) for n, c in self.combinations.items()}}
            wanted = [BASELINE, *contenders]
            if not self.budget.fits(len(wanted) * base.wall_s):
                self.not_fitted.append(f"repeat with seed {seed} ({len(wanted)} runs)")
                return
            for recipe in wanted:
                config = self.baseline if recipe == BASELINE else configs[recipe]
                assert config is not None
                if self._run_one(recipe, config, seed, goal, base) is None:
                    return


def behind_after(base_time: float) -> float:
    """The training time past which a race that has not reached the target is clearly behind."""
    return max(BEHIND_MARGIN * base_time, base_time + BEHIND_SLACK_S)


def _name(trial: list[Candidate]) -> str:
    return " + ".join(c.name for c in trial)


def _changes(trial: list[Candidate]) -> dict[str, Any]:
    return {key: value for c in trial for key, value in c.changes.items()}


def _is_winner(row: Any, advice: Advice) -> bool:
    base = next(r for r in advice.rows if r.recipe == BASELINE)
    return faster(row, base)


def _same(values: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether ``other`` holds every value of ``values`` (floats to 1e-9: a scaled lr computed two ways)."""
    def equal(a: Any, b: Any) -> bool:
        return abs(a - b) <= 1e-9 * max(abs(a), abs(b)) if isinstance(a, float) and isinstance(b, float) else a == b
    return all(k in other and equal(v, other[k]) for k, v in values.items())


def _chose(s: Screened) -> str:
    return f", chose {_values(s.chose)}" if s.chose else ""


def _values(chose: dict[str, Any]) -> str:
    """'batch_size 2048, lr 0.00566': a scaled lr to three figures (the recipe keeps it exact)."""
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in chose.items())

