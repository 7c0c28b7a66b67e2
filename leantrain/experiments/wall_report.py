"""summary.md's "Where the wall time went": each recipe's wall time from its process's start to its record, in
parts (``run.wall`` in a record, see train/wall_clock.py), so that a minute spent outside training shows."""
from __future__ import annotations

import statistics
from typing import Any

# (a record's part, the column's name); what no column names is "the rest" (process group, resolve, build, ...)
COLUMNS = (("data", "data"), ("probes", "auto probes"), ("preflight", "preflight"), ("training", "training"),
           ("validation", "validation"), ("compile", "compile"), ("meta_learner", "meta-learner"),
           ("checkpoints_and_other", "checkpoints, logs"), ("record", "record"))


def wall_table(recipes: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Medians over each recipe's runs, in seconds; nothing when no record has the figures (written before them)."""
    rows = [(recipe, [r["run"]["wall"] for r in runs if r["run"].get("wall")]) for recipe, runs in recipes.items()]
    rows = [(recipe, walls) for recipe, walls in rows if walls]
    if not rows:
        return []
    header = ["recipe", "wall (s)", "before the run", *(name for _, name in COLUMNS), "the rest"]
    lines = ["Where the wall time went (s, from each process's start to its record; median over the runs):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for recipe, walls in rows:
        parts = {key: statistics.median(w["parts_s"].get(key, 0.0) for w in walls) for key, _ in COLUMNS}
        total = statistics.median(w["total_s"] for w in walls)
        before = statistics.median(w.get("before_run_s") or 0.0 for w in walls)
        rest = statistics.median(_rest(w) for w in walls)
        cells = [recipe, f"{total:.1f}", f"{before:.1f}", *(f"{parts[key]:.2f}" for key, _ in COLUMNS), f"{rest:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _rest(wall: dict[str, Any]) -> float:
    named = sum(wall["parts_s"].get(key, 0.0) for key, _ in COLUMNS) + (wall.get("before_run_s") or 0.0)
    return max(0.0, wall["total_s"] - named)
