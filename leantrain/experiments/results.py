"""Reading run JSON files back, checked against the schema, for reports."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from leantrain.errors import UsageError
from leantrain.fileio import is_temporary
from leantrain.train.record import SCHEMA

REQUIRED = {"schema", "run", "env", "epochs", "summary"}
REQUIRED_EPOCH = {"epoch", "train_loss", "val_loss", "time_s", "val_time_s", "samples_per_s", "peak_mem_bytes"}


def load_run(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a readable run record ({e})") from None
    if not isinstance(record, dict) or not REQUIRED <= record.keys():
        raise UsageError(f"{path}: not a leantrain run record (needs keys {', '.join(sorted(REQUIRED))})")
    if record["schema"] != SCHEMA:
        raise UsageError(f"{path}: run record schema {record['schema']!r}; this leantrain reads schema {SCHEMA}")
    if not isinstance(record["run"], dict) or not {"name", "metric"} <= record["run"].keys():
        raise UsageError(f"{path}: its run section lacks name or metric")
    if not isinstance(record["epochs"], list) or not all(isinstance(e, dict) for e in record["epochs"]):
        raise UsageError(f"{path}: epochs must be a list of objects")
    if not isinstance(record["summary"], dict):
        raise UsageError(f"{path}: summary must be an object")
    for epoch in record["epochs"]:
        missing = REQUIRED_EPOCH - epoch.keys()
        if missing:
            raise UsageError(f"{path}: epoch {epoch.get('epoch')} lacks {', '.join(sorted(missing))}")
    return record


def load_runs(folder: Path) -> list[dict[str, Any]]:
    """Every run record in a results folder, in name order (the report is independent of file dates)."""
    if not folder.is_dir():
        raise UsageError(f"results folder {folder} does not exist")
    paths = sorted(p for p in folder.glob("*.json") if not is_temporary(p))  # not a killed writer's .tmp files
    runs = []
    for path in paths:
        try:
            runs.append(load_run(path))
        except UsageError as e:  # one bad file must not hide every good one: name it and go on
            print(f"leantrain: warning: skipping {e}", file=sys.stderr)
    if not paths:
        raise UsageError(f"results folder {folder} holds no run records (*.json)")
    if not runs:
        raise UsageError(f"results folder {folder} holds no readable run records (each *.json was skipped)")
    return runs
