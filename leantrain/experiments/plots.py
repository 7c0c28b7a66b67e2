"""PNG plots from grouped run records: per case, time / quality / loss per epoch (the seeds' three charts),
and for experiments with a baseline, bars of speedup and peak memory per recipe."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from leantrain.fileio import atomic_path  # noqa: E402

if TYPE_CHECKING:
    from leantrain.experiments.report import Case


def file_names(cases: list[Case]) -> list[str]:
    names = [f"{_slug(c.label)}.png" for c in cases]
    if any(c.baseline for c in cases):
        names.append("speedup.png")
    return names


def draw(cases: list[Case], folder: Path) -> None:
    for case in cases:
        _save(_epoch_curves(case), folder / f"{_slug(case.label)}.png")
    if any(c.baseline for c in cases):
        _save(_speedup_bars(cases), folder / "speedup.png")


def _epoch_curves(case: Case) -> plt.Figure:
    fig, (ax_time, ax_metric, ax_loss) = plt.subplots(1, 3, figsize=(15, 4.2))
    for recipe, runs in case.recipes.items():
        n = min(len(r["epochs"]) for r in runs)
        epochs = list(range(1, n + 1))
        median = lambda key, runs=runs, n=n: [statistics.median(r["epochs"][i][key] for r in runs) for i in range(n)]  # noqa: E731
        ax_time.plot(epochs, median("time_s"), marker="o", label=recipe)
        ax_metric.plot(epochs, median(case.metric), marker="o", label=recipe)
        (line,) = ax_loss.plot(epochs, median("val_loss"), marker="o", label=f"{recipe} val")
        ax_loss.plot(epochs, median("train_loss"), linestyle="--", color=line.get_color(), label=f"{recipe} train")
    if case.target is not None:
        ax_metric.axhline(case.target, color="grey", linestyle=":", label="target")
    for ax, title, ylabel in (
        (ax_time, "Training time per epoch", "seconds"),
        (ax_metric, f"{case.metric} per epoch", case.metric),
        (ax_loss, "Loss per epoch", "loss"),
    ):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(case.label)
    fig.tight_layout()
    return fig


def _speedup_bars(cases: list[Case]) -> plt.Figure:
    from leantrain.experiments.report import paired_ratios  # one definition of pairing by seed

    compared = [c for c in cases if c.baseline]
    recipes = list(dict.fromkeys(r for c in compared for r in c.recipes))
    fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(max(10, 2.5 * len(compared) + 6), 4.5))
    width = 0.8 / max(len(recipes), 1)
    for i, recipe in enumerate(recipes):
        xs, speed, low, high, mem = [], [], [], [], []
        for j, case in enumerate(compared):
            if recipe not in case.recipes:
                continue
            ratios = paired_ratios(case, recipe, case.time_to_target) or [0.0]
            mid = statistics.median(ratios)
            xs.append(j + i * width)
            speed.append(mid)
            low.append(mid - min(ratios))
            high.append(max(ratios) - mid)
            mem.append(statistics.median(r["summary"]["peak_mem_bytes"] for r in case.recipes[recipe]) / 2**20)
        ax_speed.bar(xs, speed, width, yerr=[low, high], capsize=3, label=recipe)
        ax_mem.bar(xs, mem, width, label=recipe)
    for ax, title, ylabel in (
        (ax_speed, "Speedup in time to target vs baseline (0 = not reached)", "×"),
        (ax_mem, "Peak memory", "MiB"),
    ):
        ax.set_xticks([j + width * (len(recipes) - 1) / 2 for j in range(len(compared))])
        ax.set_xticklabels([c.label for c in compared], rotation=15, fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    ax_speed.axhline(1.0, color="grey", linestyle=":")
    fig.tight_layout()
    return fig


def _save(fig: plt.Figure, path: Path) -> None:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
