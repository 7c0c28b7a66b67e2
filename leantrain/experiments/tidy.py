"""One tidy table of run records: a row per run × epoch, a column per variable (``leantrain report --csv``).

The run's identity (name, case, recipe, seed, model, data, techniques, machine) repeats on each of its
epochs' rows, so the table filters and groups with no join: ``pandas.read_csv(path)``, then
``df.groupby(["case", "recipe", "epoch"]).val_acc.median()``. Only scalars become columns; lists and
nested objects of an epoch (loss spikes, per-rank memory, ensemble members) stay in the JSON. An epoch
without a value has an empty cell (NaN in pandas).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from leantrain.fileio import atomic_path

RUN_COLUMNS = ("run", "case", "recipe", "seed", "model", "data", "task", "metric", "techniques", "parallel",
               "world_size", "device", "device_name", "threads", "cpu_capability", "torch")


def run_columns(record: dict[str, Any]) -> dict[str, Any]:
    run, env = record.get("run", {}), record.get("env", {})
    return {
        "run": run.get("name"), "case": run.get("case", run.get("name")), "recipe": run.get("recipe", "run"),
        "seed": run.get("seed"), "model": run.get("model"), "data": run.get("data"), "task": run.get("task"),
        "metric": run.get("metric"), "techniques": "+".join(run.get("techniques") or []) or "none",
        "parallel": run.get("parallel"), "world_size": run.get("world_size"), "device": env.get("device"),
        "device_name": env.get("device_name"), "threads": env.get("threads"),
        "cpu_capability": env.get("cpu_capability"), "torch": env.get("torch"),
    }


def epoch_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of run columns plus each epoch's scalar values, in record then epoch order."""
    rows = []
    for record in records:
        identity = run_columns(record)
        for epoch in record["epochs"]:
            rows.append({**identity, **{k: v for k, v in epoch.items() if _scalar(v) and k not in identity}})
    return rows


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """The run columns, then every epoch key in the order first seen."""
    seen = dict.fromkeys(RUN_COLUMNS)
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def write_csv(records: list[dict[str, Any]], path: Path) -> Path:
    rows = epoch_rows(records)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns(rows), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def train_metric_key(epochs: list[dict[str, Any]]) -> str | None:
    """The training accuracy (``train_acc``, ``train_token_acc``, ...) every one of these epochs holds, if any
    (records older than it have none)."""
    keys = [{k for k in e if k.startswith("train_") and k.endswith("acc")} for e in epochs]
    common = set.intersection(*keys) if keys else set()
    return min(common) if common else None


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (int, float, str, bool))
