"""Notebook helpers: a run's epochs as a DataFrame, the report's epoch plots, and the speedup table for a few runs.

They take what ``lt.fit`` returns (a record dict, or any object with ``.epochs`` and optionally ``.record`` /
``.run``), a run JSON loaded from disk, or a bare list of epoch dicts, so a notebook needs no result folder:

    base = lt.fit(model_a, data, epochs=3)
    fast = lt.fit(model_b, data, epochs=3, precision="bf16")
    lt.compare({"baseline": base, "bf16": fast})      # a Markdown table in Jupyter, text when printed

pandas and matplotlib are imported only when a helper that needs them is called.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from leantrain.errors import UsageError
from leantrain.experiments.quality import quality_delta
from leantrain.experiments.views import Run, as_run, epochs_frame, labelled, plot_epochs
from leantrain.train.record import time_to_target

__all__ = ["Comparison", "Run", "as_run", "compare", "epochs_frame", "plot_epochs"]

DEFAULT_TOLERANCE = 0.005  # the target: the baseline's final metric less this, as experiments' "baseline-final"


@dataclass
class Comparison:
    """The speedup table: one row per result, the first (or ``baseline``) being the reference."""

    rows: list[dict[str, Any]]
    metric: str
    target: float | None

    def to_markdown(self) -> str:
        header = ["run", "epochs", "epoch time (s)", f"final {self.metric}", "Δ vs baseline", "samples/s",
                  "time to target (s)", "speedup to target", "speedup per epoch"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in self.rows:
            lines.append("| " + " | ".join([
                row["run"], str(row["epochs"]), _fmt(row["epoch_time_s"], "{:.3f}"), _fmt(row["final"], "{:.4f}"),
                row["quality"], _fmt(row["samples_per_s"], "{:,.0f}"), _fmt(row["time_to_target_s"], "{:.3f}"),
                _fmt(row["speedup_to_target"], "{:.2f}×", "not reached"), _fmt(row["speedup_per_epoch"], "{:.2f}×"),
            ]) + " |")
        target = "none" if self.target is None else f"{self.metric} reaching {self.target:.4f}"
        return "\n".join(lines) + f"\n\nTarget: {target}. Δ vs baseline: absolute (relative) difference of the final " \
            "metric, ▲ better / ▼ worse, against seed 001's ±0.5% band."

    def __str__(self) -> str:
        return self.to_markdown()

    def _repr_markdown_(self) -> str:  # Jupyter renders the table
        return self.to_markdown()

    def to_pandas(self) -> Any:
        import pandas

        return pandas.DataFrame(self.rows)


def compare(results: Any, *, baseline: str | None = None, target: float | None = None,
            tolerance: float = DEFAULT_TOLERANCE) -> Comparison:
    """Speedups against a baseline, with the quality delta beside each.

    ``results``: a dict label -> result, or a list (labelled by run name, else by position). The baseline is
    ``baseline`` (a label) or the first. ``target``: the validation metric to reach for time-to-target; by
    default the baseline's final value less ``tolerance`` (plus, for a lower-is-better metric)."""
    runs = labelled(results)
    if len(runs) < 2:
        raise UsageError("compare needs at least two results: a baseline and one to compare with it")
    label = baseline if baseline is not None else next(iter(runs))
    if label not in runs:
        raise UsageError(f"baseline {label!r} is not one of: {', '.join(runs)}")
    base = runs[label]
    metric, higher = base.metric, base.higher_is_better
    if target is None and base.final(metric) is not None:
        target = base.final(metric) - tolerance if higher else base.final(metric) + tolerance
    base_time = time_to_target(base.epochs, metric, target, higher)
    base_epoch = _mean_epoch_time(base)
    rows = []
    for name, run in {label: base, **runs}.items():
        reached = time_to_target(run.epochs, metric, target, higher)
        final, base_final = run.final(metric), base.final(metric)
        rates = [e["samples_per_s"] for e in run.epochs if e.get("samples_per_s")]
        epoch_time = _mean_epoch_time(run)
        rows.append({
            "run": name, "epochs": len(run.epochs), "epoch_time_s": epoch_time, "final": final,
            "quality": quality_delta(final, base_final, higher).render() if final is not None and base_final is not None
            else "—",
            "samples_per_s": statistics.median(rates) if rates else None, "time_to_target_s": reached,
            "speedup_to_target": base_time / reached if base_time and reached else None,
            "speedup_per_epoch": base_epoch / epoch_time if base_epoch and epoch_time else None,
        })
    return Comparison(rows, metric, target)


def _mean_epoch_time(run: Run) -> float | None:
    times = [e["time_s"] for e in run.epochs if e.get("time_s") is not None]
    return sum(times) / len(times) if times else None


def _fmt(value: Any, fmt: str, missing: str = "—") -> str:
    return missing if value is None else fmt.format(value)
