"""PNG plots from plain numbers: per case, time / quality / loss per epoch (the seeds' three charts), and for
experiments with a baseline, bars of speedup and peak memory per recipe. The report computes the numbers;
this module only draws them, so it knows nothing of the report's types."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from leantrain.fileio import atomic_path  # noqa: E402


@dataclass
class EpochCurves:
    """One case: per recipe, per-epoch medians of ``time_s``, ``val_loss``, ``train_loss``, the metric and, when
    recorded, the training accuracy (drawn dashed beside the metric when the metric is an accuracy too)."""

    label: str
    metric: str
    target: float | None
    recipes: dict[str, dict[str, list[float]]]
    train_metric: str | None = None


@dataclass
class RecipeBars:
    """One recipe across the compared cases: per case index, speedup ratios over seeds and median peak MiB."""

    speedups: dict[int, list[float]] = field(default_factory=dict)
    peak_mem_mib: dict[int, float] = field(default_factory=dict)


@dataclass
class SpeedupBars:
    cases: list[str]  # labels of the cases that have a baseline, in order
    recipes: dict[str, RecipeBars]


def file_names(labels: list[str], with_bars: bool) -> list[str]:
    return [f"{_slug(label)}.png" for label in labels] + (["speedup.png"] if with_bars else [])


def draw(curves: list[EpochCurves], bars: SpeedupBars | None, folder: Path) -> None:
    for case in curves:
        _save(epoch_figure(case), folder / f"{_slug(case.label)}.png")
    if bars is not None:
        _save(_speedup_bars(bars), folder / "speedup.png")


def epoch_figure(case: EpochCurves) -> Figure:
    """Time, quality and loss per epoch, one line per recipe (the report's chart; notebooks draw it too)."""
    fig, (ax_time, ax_metric, ax_loss) = plt.subplots(1, 3, figsize=(15, 4.2))
    # Training accuracy shares the axis only with an accuracy (not with perplexity or PSNR).
    train_metric = case.train_metric if case.train_metric and case.metric.endswith(("acc", "match")) else None
    for recipe, series in case.recipes.items():
        epochs = list(range(1, len(series["time_s"]) + 1))
        ax_time.plot(epochs, series["time_s"], marker="o", label=recipe)
        (line,) = ax_metric.plot(epochs, series[case.metric], marker="o", label=f"{recipe} {case.metric}")
        if train_metric and train_metric in series:
            ax_metric.plot(epochs, series[train_metric], linestyle="--", color=line.get_color(),
                           label=f"{recipe} {train_metric}")
        (line,) = ax_loss.plot(epochs, series["val_loss"], marker="o", label=f"{recipe} val")
        ax_loss.plot(epochs, series["train_loss"], linestyle="--", color=line.get_color(), label=f"{recipe} train")
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


def _speedup_bars(bars: SpeedupBars) -> Figure:
    fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(max(10, 2.5 * len(bars.cases) + 6), 4.5))
    width = 0.8 / max(len(bars.recipes), 1)
    for i, (recipe, per_case) in enumerate(bars.recipes.items()):
        xs, speed, low, high, mem = [], [], [], [], []
        for j, ratios in per_case.speedups.items():
            ratios = ratios or [0.0]  # target not reached: a zero bar
            mid = statistics.median(ratios)
            xs.append(j + i * width)
            speed.append(mid)
            low.append(mid - min(ratios))
            high.append(max(ratios) - mid)
            mem.append(per_case.peak_mem_mib[j])
        ax_speed.bar(xs, speed, width, yerr=[low, high], capsize=3, label=recipe)
        ax_mem.bar(xs, mem, width, label=recipe)
    for ax, title, ylabel in (
        (ax_speed, "Speedup in time to target vs baseline (0 = not reached)", "×"),
        (ax_mem, "Peak memory", "MiB"),
    ):
        ax.set_xticks([j + width * (len(bars.recipes) - 1) / 2 for j in range(len(bars.cases))])
        ax.set_xticklabels(bars.cases, rotation=15, fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    ax_speed.axhline(1.0, color="grey", linestyle=":")
    fig.tight_layout()
    return fig


def _save(fig: Figure, path: Path) -> None:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
