"""The answer: ``advice.md`` (and the same table on the terminal), ``advice.json``, and the plot of time to target
against final quality (memory as the marker's size)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from leantrain.advice.advisor import BEHIND_MARGIN, BEHIND_SLACK_S, Findings
from leantrain.advice.budget import render_seconds
from leantrain.advice.recommend import BASELINE, SIGN_TEST_ALPHA, SIGN_TEST_PAIRS, SINGLE_RUN_MARGIN, Row
from leantrain.experiments.machine_report import machine_line
from leantrain.experiments.quality import QUALITY_BAND
from leantrain.experiments.report import median_spread

PLOT = "advice.png"


def resolved_changes(findings: Findings, recipe: str) -> dict[str, Any]:
    """The recipe's changes with each ``auto`` value replaced by what it chose (from its records), as a user keeps it."""
    changes = dict(findings.changes_of(recipe))
    records = [m.record for m in findings.measurements if m.recipe == recipe and m.record is not None]
    tuned = (records[0]["run"].get("autotune") or {}) if records else {}
    for knob, entry in tuned.items():
        if knob in changes and isinstance(entry, dict) and "choice" in entry:
            changes[knob] = entry["choice"]
            if knob == "batch_size" and "lr" in entry:
                changes["lr"] = entry["lr"]
                changes.pop("lr_batch", None)
    return changes


def table(findings: Findings) -> list[str]:
    goal = findings.goal
    arrow = "≥" if goal.higher_is_better else "≤"
    to = "time to target" if goal.target is not None else "training time (equal epochs)"
    lines = [f"| # | recipe | speed-up ({to}) | {to} | final {goal.metric} | Δ vs baseline | peak memory | "
             f"activation memory | repeats | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for n, row in enumerate(findings.advice.rows, 1):
        speed = "1.00×" if row.recipe == BASELINE else median_spread(row.speedups, "{:.2f}×")
        lines.append(
            f"| {n} | {row.recipe} | {speed} | {median_spread(row.times, render_seconds)} | "
            f"{'—' if row.final is None else f'{row.final:.4f}'} | "
            f"{'—' if row.recipe == BASELINE or row.quality is None else row.quality.render()} | "
            f"{_mib(row.peak_mem)} | {_mib(row.activation_mem)} | {_repeats(row)} | {row.problem or row.note or ''} |")
    if goal.target is not None:
        lines.append(f"\nTarget: {goal.metric} {arrow} {goal.target:.4f} (the baseline's final less the tolerance).")
    return lines


def _repeats(row: Row) -> str:
    return f"{row.repeats}" + (f" ({row.noisy} noisy)" if row.noisy else "")


def _mib(value: float | None) -> str:
    return "—" if value is None else f"{value / 2**20:.2f} MiB"


def recommendation(findings: Findings) -> str:
    advice = findings.advice
    if advice.recommended is None:
        return f"**Recommendation: keep your recipe:** {advice.reason}."
    changes = resolved_changes(findings, advice.recommended.recipe)
    shown = ", ".join(f"{k} = {v!r}" for k, v in changes.items())
    return f"**Recommendation: {advice.recommended.recipe}** ({shown}). {advice.reason}."


def render(findings: Findings, env: dict[str, Any], recipe_markdown: str, baseline: dict[str, Any]) -> str:
    lines = ["# leantrain advise", "",
             f"Model `{baseline['model']}` on `{baseline['data']}`, {baseline['epochs']} epochs. "
             f"{machine_line(env)} torch {env.get('torch', '?')}.",
             f"Budget {render_seconds(findings.budget_s)}, spent {render_seconds(findings.spent_s)}.", "",
             recommendation(findings), ""]
    if findings.goal.fallback:
        lines += [f"Note: {findings.goal.fallback}.", ""]
    lines += table(findings)
    lines += ["", _method(findings), "", f"![time to target against final quality]({PLOT})", ""]
    lines += _screening(findings) + _left_out(findings)
    lines += ["", recipe_markdown.strip(), ""]
    return "\n".join(lines)


def _method(findings: Findings) -> str:
    repeats = max((r.repeats for r in findings.advice.rows), default=0)
    return (f"How: each candidate is your recipe with one change, raced to the baseline's target (stopped once there, "
            f"or once {BEHIND_MARGIN:g}× behind the baseline and at least {BEHIND_SLACK_S:g} s); the fastest are then "
            f"trained for all your epochs, interleaved with the "
            f"baseline, {repeats} repeat(s) at most (seeds paired), which measures their final quality; speed-ups are the baseline's "
            f"time over the recipe's, median [min–max]. A recipe is recommended only if it beats the baseline beyond "
            f"the spread (with {SIGN_TEST_PAIRS} or more seeds paired, a one-sided sign test at {SIGN_TEST_ALPHA:g}: 3 of "
            f"3 pairs faster, 5 of 6, 8 of 10; with two, both faster and its slowest time below the baseline's fastest; "
            f"with one repeat, by {SINGLE_RUN_MARGIN:.0%} or more) "
            f"and its final {findings.goal.metric} "
            f"stays within ±{QUALITY_BAND:.1%} of the baseline's (better is always fine). Repeats marked noisy had other "
            f"processes using CPU beside them.")


def _screening(findings: Findings) -> list[str]:
    lines = ["## Screening (one dry step each)", ""]
    for s in findings.screened:
        verdict = (f"tried ({render_seconds(s.seconds)})" if s.applies else f"not tried: {s.reason}")
        chose = f" (chose {', '.join(f'{k} {v}' for k, v in s.chose.items())})" if s.chose else ""
        lines.append(f"- **{s.candidate.name}** — {s.candidate.what}{chose}: {verdict}")
    return lines


def _left_out(findings: Findings) -> list[str]:
    if not findings.not_fitted:
        return []
    return ["", "## Did not fit in the budget", "", *[f"- {item}" for item in findings.not_fitted]]


def as_json(findings: Findings, baseline: dict[str, Any]) -> dict[str, Any]:
    advice = findings.advice
    return {
        "baseline": baseline,
        "goal": {"metric": findings.goal.metric, "higher_is_better": findings.goal.higher_is_better,
                 "target": findings.goal.target, "fallback": findings.goal.fallback},
        "recommended": None if advice.recommended is None else {
            "recipe": advice.recommended.recipe, "changes": resolved_changes(findings, advice.recommended.recipe)},
        "reason": advice.reason,
        "rows": [{"recipe": r.recipe, "speedups": r.speedups, "times_s": r.times, "final": r.final,
                  "quality_delta": None if r.quality is None else r.quality.absolute, "peak_mem_bytes": r.peak_mem,
                  "activation_bytes": r.activation_mem, "repeats": r.repeats, "noisy": r.noisy, "problem": r.problem}
                 for r in advice.rows],
        "screening": [{"candidate": s.candidate.name, "changes": s.candidate.changes, "applies": s.applies,
                       "reason": s.reason, "chose": s.chose, "seconds": s.seconds} for s in findings.screened],
        "not_fitted": findings.not_fitted,
        "budget_s": findings.budget_s, "spent_s": findings.spent_s,
    }


def write(folder: Path, findings: Findings, env: dict[str, Any], recipe_markdown: str, baseline: dict[str, Any]) -> Path:
    from leantrain.fileio import write_atomic

    draw(findings, folder / PLOT)
    write_atomic(folder / "advice.json", json.dumps(as_json(findings, baseline), indent=1, default=str))
    write_atomic(folder / "advice.md", render(findings, env, recipe_markdown, baseline))
    return folder / "advice.md"


def draw(findings: Findings, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in findings.advice.rows if r.times and r.final is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    biggest = max((r.peak_mem or 0 for r in rows), default=0) or 1
    for row in rows:
        assert row.final is not None
        x = sorted(row.times)[len(row.times) // 2]
        size = 40 + 400 * (row.peak_mem or 0) / biggest
        recommended = findings.advice.recommended is not None and row.recipe == findings.advice.recommended.recipe
        ax.scatter([x], [row.final], s=size, alpha=0.6, edgecolors="black" if recommended else "none",
                   color="tab:red" if row.recipe == BASELINE else "tab:blue")
        ax.annotate(row.recipe, (x, row.final), fontsize=7, xytext=(4, 4), textcoords="offset points")
    goal = findings.goal
    ax.set_xlabel("time to target, s" if goal.target is not None else "training time, s (equal epochs)")
    ax.set_ylabel(f"final {goal.metric}")
    ax.set_title("Each recipe: speed against quality (marker size: peak memory)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
