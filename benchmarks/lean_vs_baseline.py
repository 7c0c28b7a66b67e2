"""Time-to-target speedup of each recipe over the baseline, per case of an experiment file.

Runs every case's recipes interleaved (baseline, lean, baseline, lean, ...) in one process, repeated,
so that slow drifts of a shared machine hit all recipes alike. Each repeat's target is that repeat's
baseline final validation metric minus the experiment's tolerance; speedup = baseline time to target /
recipe time to target (training seconds). Reports median [min–max] over repeats, and flags repeats
during which other processes used more than 0.15 CPU cores.

    python benchmarks/lean_vs_baseline.py [experiments/default.toml] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from leantrain import data as data_sets
from leantrain.experiments.quality import quality_delta
from leantrain.experiments.report import median_spread
from leantrain.experiments.runner import load_experiment
from leantrain.machine import cpu_name
from leantrain.train.metrics import NOISY_FOREIGN_CORES
from leantrain.train.record import time_to_target
from leantrain.train.run import execute


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", nargs="?", type=Path, default=Path("experiments/default.toml"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    experiment = load_experiment(args.file)
    baseline, tolerance = experiment.baseline, experiment.target_tolerance
    if baseline is None:
        sys.exit(f"{args.file} names no baseline recipe")

    cases = list(dict.fromkeys(run.case for run in experiment.runs))
    rows = []
    for case in cases:
        planned = [r for r in experiment.runs if r.case == case and r.seed == experiment.seeds[0]]
        dataset = data_sets.load(planned[0].config.data, seed=planned[0].config.seed)
        records: dict[str, list[dict]] = {r.recipe: [] for r in planned}
        for repeat in range(args.repeats):
            for run in planned:
                records[run.recipe].append(execute(run.config, dataset=dataset, quiet=True))
            print(f"{case}: repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
        rows += _compare(case, records, baseline, tolerance)

    print(f"\nmachine: {cpu_name()} | torch {torch.__version__} | "
          f"threads {torch.get_num_threads()} | repeats {args.repeats} | file {args.file}")
    header = ["case", "recipe", "final acc", "Δ vs baseline (abs, rel, band)", "epoch time (s)", "time to target (s)",
              "speedup to target", "speedup per epoch", "noisy repeats"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _compare(case: str, records: dict[str, list[dict]], baseline: str, tolerance: float) -> list[list[str]]:
    metric = records[baseline][0]["run"]["metric"]
    final = lambda r: r["summary"][f"final_{metric}"]  # noqa: E731
    epoch_time = lambda r: r["summary"]["mean_epoch_time_s"]  # noqa: E731
    rows = []
    for recipe, runs in records.items():
        to_target, speedups, epoch_speedups, noisy = [], [], [], 0
        for base, mine in zip(records[baseline], runs):
            target = final(base) - tolerance
            t_base = time_to_target(base["epochs"], metric, target)
            t_mine = time_to_target(mine["epochs"], metric, target)
            to_target.append(t_mine)
            if t_base and t_mine:
                speedups.append(t_base / t_mine)
            epoch_speedups.append(epoch_time(base) / epoch_time(mine))
            noisy += any((e.get("foreign_cpu_cores") or 0) > NOISY_FOREIGN_CORES for e in base["epochs"] + mine["epochs"])
        reached = [t for t in to_target if t is not None]
        rows.append([
            case, recipe,
            f"{statistics.median(map(final, runs)):.4f}",
            quality_delta(statistics.median(map(final, runs)), statistics.median(map(final, records[baseline])),
                          runs[0]["run"].get("higher_is_better", True)).render(),
            median_spread([epoch_time(r) for r in runs], "{:.3f}"),
            median_spread(reached, "{:.3f}") if len(reached) == len(runs) else f"not reached in {len(runs) - len(reached)}",
            median_spread(speedups, "{:.1f}×"),
            median_spread(epoch_speedups, "{:.1f}×"),
            f"{noisy}/{len(runs)}",
        ])
    return rows



if __name__ == "__main__":
    main()
