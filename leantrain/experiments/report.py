"""summary.md from run records alone: per case, one row per recipe (median over seeds, [min–max] spread),
speedups against the baseline recipe paired by seed, and the quality difference beside every speedup.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leantrain.experiments import plots
from leantrain.experiments.machine_report import autotune_lines, machine_line
from leantrain.experiments.quality import QUALITY_BAND, quality_delta
from leantrain.experiments.results import load_runs
from leantrain.experiments.tidy import train_metric_key
from leantrain.experiments.wall_report import wall_table
from leantrain.fileio import write_atomic
from leantrain.train.metrics import NOISY_FOREIGN_CORES as NOISY_CPU_CORES
from leantrain.train.record import time_to_target


@dataclass
class Case:
    """All runs of one case (a model on a data set), grouped by recipe; each recipe holds one run per seed."""
    label: str
    metric: str
    higher_is_better: bool
    recipes: dict[str, list[dict[str, Any]]]
    baseline: str | None
    target: float | None

    def time_to_target(self, run: dict[str, Any]) -> float | None:
        return time_to_target(run["epochs"], self.metric, self.target, self.higher_is_better)

    @property
    def train_metric(self) -> str | None:
        """The training accuracy the runs recorded (train_acc, train_token_acc, ...), if every run has it."""
        return train_metric_key([e for runs in self.recipes.values() for r in runs for e in r["epochs"]])


def write_report(folder: Path, runs: list[dict[str, Any]] | None = None) -> Path:
    """summary.md and the plots in ``folder``, from its records (or ``runs``, already read from it)."""
    runs = load_runs(folder) if runs is None else runs
    cases = group_cases(runs)
    write_atomic(folder / "summary.md", render_summary(runs, cases))
    plots.draw([epoch_curves(c) for c in cases], speedup_bars(cases), folder)
    return folder / "summary.md"


def group_cases(runs: list[dict[str, Any]]) -> list[Case]:
    by_case: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        info = run["run"]
        by_case[info.get("case", info["name"])][info.get("recipe", "run")].append(run)
    cases = []
    for label, recipes in by_case.items():
        first = next(iter(recipes.values()))[0]["run"]
        settings = first.get("experiment", {})
        baseline = settings.get("baseline") if settings.get("baseline") in recipes else None
        metric, higher = first["metric"], first.get("higher_is_better", True)
        cases.append(Case(label, metric, higher, dict(recipes), baseline, _target(settings, recipes, metric, higher)))
    return cases


def epoch_curves(case: Case) -> plots.EpochCurves:
    """Per recipe, the per-epoch medians over seeds that the epoch plot draws."""
    series = {}
    train_metric = case.train_metric
    keys = ("time_s", case.metric, "val_loss", "train_loss", *([train_metric] if train_metric else []))
    for recipe, runs in case.recipes.items():
        n = min(len(r["epochs"]) for r in runs)
        series[recipe] = {key: [statistics.median(r["epochs"][i][key] for r in runs) for i in range(n)] for key in keys}
    return plots.EpochCurves(case.label, case.metric, case.target, series, train_metric)


def speedup_bars(cases: list[Case]) -> plots.SpeedupBars | None:
    """Speedup to target (paired by seed) and median peak memory, per recipe and compared case; None without a baseline."""
    compared = [c for c in cases if c.baseline]
    if not compared:
        return None
    recipes = {r: plots.RecipeBars() for c in compared for r in c.recipes}
    for j, case in enumerate(compared):
        for recipe, runs in case.recipes.items():
            recipes[recipe].speedups[j] = paired_ratios(case, recipe, case.time_to_target)
            recipes[recipe].peak_mem_mib[j] = statistics.median(r["summary"]["peak_mem_bytes"] for r in runs) / 2**20
    return plots.SpeedupBars([c.label for c in compared], recipes)


def _target(settings: dict[str, Any], recipes: dict[str, list], metric: str, higher: bool) -> float | None:
    target = settings.get("target")
    if target == "baseline-final":
        baseline = recipes.get(settings.get("baseline") or "", [])
        finals = [r["summary"][f"final_{metric}"] for r in baseline if r["summary"].get(f"final_{metric}") is not None]
        if not finals:
            return None
        tolerance = settings.get("target_tolerance", 0.0)
        return statistics.median(finals) - tolerance if higher else statistics.median(finals) + tolerance
    return target


def render_summary(runs: list[dict[str, Any]], cases: list[Case]) -> str:
    settings = runs[0]["run"].get("experiment", {})
    env = runs[0]["env"]
    lines = [f"# {settings.get('name', 'leantrain runs')}", ""]
    if settings.get("description"):
        lines += [settings["description"], ""]
    lines += [
        f"Machine: {env['device_name']} ({env['device']}, {env['threads']} threads), torch {env['torch']}, "
        f"python {env['python']}, commit {(env.get('git_commit') or 'unknown')[:10]}.",
        "Times are training seconds (validation and torch.compile's compilation excluded: compile time is in "
        "'Where the wall time went'); throughput leaves out the first optimizer step of each process (warm-up). "
        "Several seeds: median [min–max]. Speedups are paired by seed against the "
        f"baseline recipe. Δ vs baseline: the final metric's absolute and relative difference from the baseline's "
        f"(medians), ▲ better / ▼ worse; ⚠ marks a worse result outside seed 001's ±{QUALITY_BAND:.1%} band.",
        _noise_note(runs),
        *filter(None, [machine_line(env), *autotune_lines(runs)]),
        "",
    ]
    for case in cases:
        lines += _case_section(case)
    names = plots.file_names([c.label for c in cases], with_bars=any(c.baseline for c in cases))
    lines.append("Plots: " + ", ".join(f"`{p}`" for p in names))
    return "\n".join(lines) + "\n"


def _case_section(case: Case) -> list[str]:
    metric, short = case.metric, case.metric.removeprefix("val_")
    target = "none" if case.target is None else f"{case.metric} {'≥' if case.higher_is_better else '≤'} {case.target:.4f}"
    lines = [f"## {case.label}", "", f"Target for time-to-target: {target}.", ""]
    header = [
        "recipe", "workers × threads", "seeds", "epoch time (s)", f"final {short}", "Δ vs baseline", "final val loss", "samples/s",
        "steps/s train / val / overall", "peak mem", "activation mem", "utilisation", "time to target (s)",
        "speedup to target", "speedup per epoch", "scaling efficiency",
    ]
    has_tokens = any(r["epochs"][0].get("train_tokens_per_s") for runs in case.recipes.values() for r in runs)
    if has_tokens:
        header.insert(9, "tokens/s train / val / overall")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for recipe, runs in case.recipes.items():
        final = lambda r: r["summary"].get(f"final_{metric}")  # noqa: E731
        row = [
            recipe, f"{_workers(runs[0])} × {runs[0]['env']['threads']}", str(len(runs)),
            _spread(runs, lambda r: r["summary"]["mean_epoch_time_s"], "{:.3f}"),
            _spread(runs, final, "{:.4f}"),
            _quality_delta(case, runs, final),
            _spread(runs, lambda r: r["summary"]["final_val_loss"], "{:.4f}"),
            _spread(runs, lambda r: r["summary"]["median_samples_per_s"], "{:,.0f}"),
            " / ".join(_spread(runs, _mean_of(k), "{:,.1f}") for k in
                       ("train_steps_per_s", "val_steps_per_s", "overall_steps_per_s")),
            _spread(runs, lambda r: r["summary"]["peak_mem_bytes"], _mib),
            _spread(runs, lambda r: max(e.get("activation_bytes") or 0 for e in r["epochs"]), _mib),
            _spread(runs, lambda r: r["summary"].get("utilisation"), "{:.1%}"),
            _spread(runs, case.time_to_target, "{:.3f}"),
            _speedup(case, recipe, case.time_to_target) if case.target is not None else "—",
            _speedup(case, recipe, lambda r: r["summary"]["mean_epoch_time_s"]),
            _scaling_efficiency(case, recipe),
        ]
        if has_tokens:
            row.insert(9, " / ".join(_spread(runs, _mean_of(k), "{:,.0f}") for k in
                                     ("train_tokens_per_s", "val_tokens_per_s", "overall_tokens_per_s")))
        lines.append("| " + " | ".join(row) + " |")
    settings = next(iter(case.recipes.values()))[0]["run"].get("experiment", {})
    for missing in settings.get("unavailable", []):
        if missing["case"] == case.label:
            lines.append(f"| {missing['recipe']} | {missing['why']} |" + " |" * (len(header) - 2))
    lines += ["", *_findings(case), *_epoch_table(case), "", *wall_table(case.recipes)]
    for recipe, runs in case.recipes.items():
        lines += _ensemble_table(recipe, runs[0])
    return lines


SPEEDUP_NOTABLE = 0.05  # epoch-time ratios within 5% of 1 are "no clear change" on a shared machine


def _findings(case: Case) -> list[str]:
    """One generated sentence per several-worker recipe: did distribution pay off for this model, and at what
    quality and per-rank memory (seed 002 found synchronisation overhead ate the gain on its small CNN)."""
    if case.baseline is None:
        return []
    sentences = []
    base_runs = case.recipes[case.baseline]
    for recipe, runs in case.recipes.items():
        if recipe == case.baseline or _workers(runs[0]) == 1:
            continue
        ratios = paired_ratios(case, recipe, lambda r: r["summary"]["mean_epoch_time_s"])
        if not ratios:
            continue
        speedup = statistics.median(ratios)
        if speedup >= 1 + SPEEDUP_NOTABLE:
            verdict = f"distribution helped: {speedup:.2f}× the {case.baseline} speed per epoch"
        elif speedup <= 1 - SPEEDUP_NOTABLE:
            verdict = (f"communication and synchronisation cost more than the split work saved: {speedup:.2f}× "
                       f"the {case.baseline} speed per epoch")
        else:
            verdict = f"no clear change in epoch time ({speedup:.2f}×)"
        final = lambda r: r["summary"].get(f"final_{case.metric}")  # noqa: E731
        sentence = f"- **{recipe}** ({_workers(runs[0])} workers): {verdict}; {case.metric} {_quality_delta(case, runs, final)}"
        per_rank = runs[0]["epochs"][-1].get("state_bytes_per_rank")
        whole = base_runs[0]["epochs"][-1].get("state_bytes")
        if per_rank and whole:
            sentence += f"; model state per rank {max(per_rank) / whole:.2f}× the {case.baseline} figure"
        sentences.append(sentence + ".")
    return ["Findings (generated from the numbers above):", "", *sentences, ""] if sentences else []


def _ensemble_table(recipe: str, run: dict[str, Any]) -> list[str]:
    """Member by member, and the ensemble against its best member (last epoch, first seed)."""
    last = run["epochs"][-1]
    if "ensemble" not in last:
        return []
    e = last["ensemble"]
    lines = [f"Ensemble `{recipe}` ({run['run']['name']}, epoch {last['epoch']}):", "",
             "| member | model | val acc | val loss | epoch time (s) |", "|---|---|---|---|---|"]
    for rank, member in enumerate(last["members"]):
        lines.append(f"| {rank} | `{member['model']}` | {member['val_acc']:.4f} | {member['val_loss']:.4f} | "
                     f"{member['time_s']:.3f} |")
    lines += [
        "",
        f"Averaged probabilities: {e['average_acc']:.4f} on the whole validation split vs best member "
        f"{e['best_member_acc']:.4f}. Stacked logistic regression, fitted on {e['stack_fit_samples']} validation "
        f"samples and scored on the other {e['stack_score_samples']}: {e['stacked_acc_on_held_out_half']:.4f} "
        f"(averaged {e['average_acc_on_held_out_half']:.4f}, best member {e['best_member_acc_on_held_out_half']:.4f} "
        f"on that half). Wall time per epoch {e['wall_time_s']:.3f} s with the members side by side; their epoch "
        f"times add up to {e['members_time_sum_s']:.3f} s (measured while sharing the machine).",
        "",
    ]
    return lines


def _epoch_table(case: Case) -> list[str]:
    short, train_metric = case.metric.removeprefix("val_"), case.train_metric
    every = [r for runs in case.recipes.values() for r in runs]
    tokens = all(e.get("train_tokens_per_s") for r in every for e in r["epochs"])
    header = ["recipe", "epoch", "time (s)", "train loss", "val loss", short]
    header += [train_metric.replace("_", " ")] if train_metric else []
    header += ["train tokens/s"] if tokens else []
    lines = ["Per epoch (median over seeds; training accuracy is counted on the training steps' own forward passes, "
             "as the weights moved through the epoch):", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for recipe, runs in case.recipes.items():
        for index in range(min(len(r["epochs"]) for r in runs)):
            at = lambda key, index=index, runs=runs: statistics.median(r["epochs"][index][key] for r in runs)  # noqa: E731
            row = [recipe, str(index + 1), f"{at('time_s'):.3f}", f"{at('train_loss'):.4f}", f"{at('val_loss'):.4f}",
                   f"{at(case.metric):.4f}"]
            row += [f"{at(train_metric):.4f}"] if train_metric else []
            row += [f"{at('train_tokens_per_s'):,.0f}"] if tokens else []
            lines.append("| " + " | ".join(row) + " |")
    return lines


def _mean_of(key: str) -> Callable[[dict[str, Any]], float | None]:
    def mean(run: dict[str, Any]) -> float | None:
        values = [e[key] for e in run["epochs"] if e.get(key) is not None]
        return sum(values) / len(values) if values else None

    return mean


def median_spread(values: list[float], fmt: Any) -> str:
    """'median [min–max]' of repeated measurements (just the value when there is one); fmt: format string or function."""
    show = fmt if callable(fmt) else fmt.format
    if not values:
        return "—"
    if len(values) == 1:
        return show(values[0])
    return f"{show(statistics.median(values))} [{show(min(values))}–{show(max(values))}]"


def _spread(runs: list[dict[str, Any]], value: Callable[[dict[str, Any]], Any], fmt: Any) -> str:
    return median_spread([v for v in map(value, runs) if v is not None], fmt)


def paired_ratios(case: Case, recipe: str, value: Callable[[dict[str, Any]], float | None]) -> list[float]:
    """Per seed: baseline value / recipe value (a speedup when the value is a time)."""
    if case.baseline is None:
        return []
    base = {r["run"]["seed"]: value(r) for r in case.recipes[case.baseline]}
    ratios = []
    for run in case.recipes[recipe]:
        b, v = base.get(run["run"]["seed"]), value(run)
        if b is not None and v:
            ratios.append(b / v)
    return ratios


def _speedup(case: Case, recipe: str, value: Callable[[dict[str, Any]], float | None]) -> str:
    if case.baseline is None:
        return "—"
    if recipe == case.baseline:
        return "1.00×"
    ratios = paired_ratios(case, recipe, value)
    return median_spread(ratios, "{:.2f}×") if ratios else "target not reached"


def _quality_delta(case: Case, runs: list[dict[str, Any]], final: Callable) -> str:
    if case.baseline is None:
        return "—"
    base = [v for v in map(final, case.recipes[case.baseline]) if v is not None]
    mine = [v for v in map(final, runs) if v is not None]
    if not base or not mine:
        return "—"
    return quality_delta(statistics.median(mine), statistics.median(base), case.higher_is_better).render()


def _workers(run: dict[str, Any]) -> int:
    return int(run["run"].get("world_size", 1))


def _scaling_efficiency(case: Case, recipe: str) -> str:
    """N-worker samples/s over N times one worker's, paired by seed; the one-worker recipe with the same
    threads per worker is the reference when there is one (else any one-worker recipe)."""
    runs = case.recipes[recipe]
    workers = _workers(runs[0])
    if workers == 1:
        return "—"
    single = [r for r in case.recipes if _workers(case.recipes[r][0]) == 1]
    same_threads = [r for r in single if case.recipes[r][0]["env"]["threads"] == runs[0]["env"]["threads"]]
    if not single:
        return "—"
    reference = (same_threads or single)[0]
    base = {r["run"]["seed"]: r["summary"]["median_samples_per_s"] for r in case.recipes[reference]}
    ratios = [r["summary"]["median_samples_per_s"] / (workers * base[r["run"]["seed"]])
              for r in runs if base.get(r["run"]["seed"]) and r["summary"]["median_samples_per_s"]]
    return f"{median_spread(ratios, '{:.2f}')} (vs {reference})" if ratios else "—"


def _mib(value: float) -> str:
    return f"{value / 2**20:.2f} MiB"


def _noise_note(runs: list[dict[str, Any]]) -> str:
    worst = max((e.get("foreign_cpu_cores") or 0.0 for r in runs for e in r["epochs"]), default=0.0)
    noisy = sorted({r["run"]["name"] for r in runs for e in r["epochs"] if (e.get("foreign_cpu_cores") or 0) > NOISY_CPU_CORES})
    note = f"Other processes used at most {worst:.2f} CPU cores during any epoch."
    if noisy:
        note += f" ⚠ Above {NOISY_CPU_CORES} cores (timings suspect): {', '.join(noisy)}."
    return note
