"""leantrain advise against the hand-tuned lean recipe: how long the advice takes, and how good its answer is.

1. ``lt.advise`` on a case of experiments/default.toml, with the seed's recipe (its baseline) as the user's recipe
   and the given budget; the wall time is measured from the call to its return.
2. The recommended recipe against default.toml's lean recipe for that case, interleaved (baseline, recommended,
   lean; repeated), time to the repeat's baseline final metric less the tolerance, training seconds.

    python benchmarks/advise.py [--case imagenet-sim] [--budget 5m] [--repeats 3] [--out results/bench-advise]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import leantrain as lt
from leantrain import data as data_sets
from leantrain.config import RunConfig
from leantrain.experiments.report import median_spread
from leantrain.experiments.runner import load_experiment
from leantrain.machine import cpu_name
from leantrain.train.metrics import NOISY_FOREIGN_CORES
from leantrain.train.record import time_to_target
from leantrain.train.run import execute

TOLERANCE = 0.005


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", default="imagenet-sim", help="a case of experiments/default.toml, by its data set")
    parser.add_argument("--budget", default="5m")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/bench-advise"))
    args = parser.parse_args()
    recipes = _default_recipes(args.case)
    baseline = {k: v for k, v in recipes["baseline"].items() if k not in ("model", "data")}
    start = time.perf_counter()
    result = lt.advise(recipes["baseline"]["model"], recipes["baseline"]["data"], budget=args.budget,
                       baseline=baseline, out=args.out, force=True)
    wall = time.perf_counter() - start
    recommended = result.recommended or recipes["baseline"]
    print(f"advise: {wall:.0f} s wall for a {args.budget} budget; recommended: "
          f"{result.findings.advice.recommended.recipe if result.findings.advice.recommended else 'keep your recipe'}")
    _compare({"baseline": recipes["baseline"], "recommended": recommended, "lean": recipes["lean"]}, args.repeats)


def _default_recipes(case: str) -> dict[str, dict[str, Any]]:
    experiment = load_experiment(Path("experiments/default.toml"))
    runs = [r for r in experiment.runs if r.config.data.split(":")[0] == case and r.seed == experiment.seeds[0]]
    if not runs:
        sys.exit(f"no case {case!r} in experiments/default.toml")
    return {r.recipe: {**r.config.to_dict(), "name": ""} for r in runs}


def _compare(recipes: dict[str, dict[str, Any]], repeats: int) -> None:
    dataset = data_sets.load(recipes["baseline"]["data"], seed=recipes["baseline"]["seed"])
    records: dict[str, list[dict[str, Any]]] = {name: [] for name in recipes}
    for repeat in range(repeats):
        for name, settings in recipes.items():
            config = RunConfig.from_dict({**settings, "memory_check": False})
            records[name].append(execute(config, dataset=dataset, quiet=True))
        print(f"repeat {repeat + 1}/{repeats} done", file=sys.stderr, flush=True)
    metric = records["baseline"][0]["run"]["metric"]
    times: dict[str, list[float]] = {name: [] for name in recipes}
    for i in range(repeats):
        target = records["baseline"][i]["summary"][f"final_{metric}"] - TOLERANCE
        for name in recipes:
            times[name].append(time_to_target(records[name][i]["epochs"], metric, target) or float("nan"))
    noisy = sum(1 for rs in records.values() for r in rs
                if any((e.get("foreign_cpu_cores") or 0) > NOISY_FOREIGN_CORES for e in r["epochs"]))
    print(f"\nMachine: {cpu_name()}, PyTorch CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; {noisy} noisy runs of {repeats * len(recipes)}.")
    print("\n| recipe | time to target, s | vs lean | final " + metric + " |\n|---|---|---|---|")
    for name in recipes:
        ratio = [lean / mine for lean, mine in zip(times["lean"], times[name])]
        finals = [r["summary"][f"final_{metric}"] for r in records[name]]
        print(f"| {name} | {median_spread(times[name], '{:.2f}')} | {median_spread(ratio, '{:.2f}×')} | "
              f"{statistics.median(finals):.4f} |")


if __name__ == "__main__":
    main()
