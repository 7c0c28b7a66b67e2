"""Reading run JSON files back, checked against the schema, for reports."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from leantrain.errors import UsageError
from leantrain.fileio import is_temporary
from leantrain.train.record import SCHEMA

REQUIRED = {"schema", "run", "env", "epochs", "summary"}
REQUIRED_EPOCH = {"epoch", "train_loss", "val_loss", "time_s", "val_time_s", "samples_per_s", "peak_mem_bytes"}


def load_run(path: Path) -> dict[str, Any]:
    """A run record, checked as far as the report and ``run --resume`` read it; else one line saying what is wrong."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a readable run record ({e})") from None
    problem = record_problem(record)
    if problem:
        raise UsageError(f"{path}: {problem}")
    return record


def readable_record(path: Path) -> bool:
    """Whether ``load_run`` takes the file (without saying why not: its reader says that)."""
    try:
        load_run(path)
    except UsageError:
        return False
    return True


def record_problem(record: Any) -> str | None:
    """What makes a decoded record unusable (a hand edit, another program's JSON), in a few words; None if whole."""
    if not isinstance(record, dict) or not REQUIRED <= record.keys():
        return f"not a leantrain run record (needs keys {', '.join(sorted(REQUIRED))})"
    if record["schema"] != SCHEMA:
        return f"run record schema {record['schema']!r}; this leantrain reads schema {SCHEMA}"
    return _shape_problem(record) or next(_field_problems(record), None)


def _shape_problem(record: dict[str, Any]) -> str | None:
    for where in ("run", "env", "summary"):
        if not isinstance(record[where], dict):
            return f"{where} must be an object"
    epochs = record["epochs"]
    if not isinstance(epochs, list) or not epochs or not all(isinstance(e, dict) for e in epochs):
        return "epochs must be a non-empty list of objects (one per finished epoch)"
    return None


def _field_problems(record: dict[str, Any]) -> Iterator[str]:
    """Each section's first bad field, in file order; the caller takes the first (later checks need earlier ones)."""
    run = record["run"]
    sections = [(run, "run", RUN_FIELDS), (record["env"], "env", ENV_FIELDS),
                (run.get("experiment", {}), "run.experiment", EXPERIMENT_FIELDS)]
    for section, where, fields in sections:
        if problem := _problem(section, where, fields):
            yield problem
    metric = run["metric"]  # checked above: a non-empty string
    for epoch in record["epochs"]:
        if problem := _problem(epoch, f"epoch {_shown(epoch.get('epoch'))}", _epoch_fields(epoch, metric)):
            yield problem
    if problem := _problem(record["summary"], "summary", _summary_fields(metric)):
        yield problem


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # NaN too: a diverged run's loss


def _number_or_null(value: Any) -> bool:
    return value is None or _number(value)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _present(value: Any) -> bool:
    return True


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(_number(v) for v in value)


def _unavailable(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, dict) and {"case", "recipe", "why"} <= v.keys() for v in value)


# key -> (test, what the value must be, required). Only what the report and the runner read.
Fields = dict[str, tuple[Callable[[Any], bool], str, bool]]
NUMBER, NUMBER_OR_NULL = (_number, "a number", True), (_number_or_null, "a number or null", True)
OPTIONAL_NUMBER = (_number_or_null, "a number or null", False)
RUN_FIELDS: Fields = {
    "name": (_text, "a non-empty string", True), "metric": (_text, "a non-empty string", True),
    "case": (_text, "a non-empty string", False), "recipe": (_text, "a non-empty string", False),
    "seed": (_count, "an integer", False), "world_size": (lambda v: _count(v) and v >= 1, "an integer >= 1", False),
    "higher_is_better": (lambda v: isinstance(v, bool), "true or false", False),
    "experiment": (lambda v: isinstance(v, dict), "an object", False),
    "techniques": (lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v), "a list of strings", False),
}
ENV_FIELDS: Fields = {key: (_present, "", True) for key in ("device", "device_name", "threads", "torch", "python")}
EXPERIMENT_FIELDS: Fields = {
    "name": (lambda v: isinstance(v, str), "a string", False),
    "description": (lambda v: isinstance(v, str), "a string", False),
    "baseline": (lambda v: v is None or isinstance(v, str), "a recipe name or null", False),
    "target": (lambda v: v == "baseline-final" or _number_or_null(v), 'a number, "baseline-final" or null', False),
    "target_tolerance": (_number, "a number", False),
    "unavailable": (_unavailable, "a list of {case, recipe, why} objects", False),
}
EPOCH_OPTIONAL = ("activation_bytes", "state_bytes", "utilisation", "foreign_cpu_cores", "train_steps_per_s",
                  "val_steps_per_s", "overall_steps_per_s", "train_tokens_per_s", "val_tokens_per_s",
                  "overall_tokens_per_s", "compile_s", "val_compile_s")
SUMMARY_OPTIONAL = ("utilisation", "train_time_s", "total_time_s", "compile_s", "time_to_target_s")


def _epoch_fields(epoch: dict[str, Any], metric: str) -> Fields:
    fields: Fields = {key: NUMBER for key in sorted(REQUIRED_EPOCH | {metric})}
    fields["samples_per_s"] = NUMBER_OR_NULL
    fields.update({key: OPTIONAL_NUMBER for key in EPOCH_OPTIONAL})
    fields.update({key: (_number, "a number", False) for key in epoch if key.startswith("train_") and key.endswith("acc")})
    fields["state_bytes_per_rank"] = (_numbers, "a list of numbers", False)
    return fields


def _summary_fields(metric: str) -> Fields:
    fields: Fields = {key: NUMBER_OR_NULL for key in ("mean_epoch_time_s", "final_val_loss", "median_samples_per_s")}
    fields["peak_mem_bytes"] = NUMBER
    fields.update({key: OPTIONAL_NUMBER for key in (*SUMMARY_OPTIONAL, f"final_{metric}", f"best_{metric}")})
    return fields


def _problem(section: dict[str, Any], where: str, fields: Fields) -> str | None:
    """The first missing or mistyped field of one section, as "<where> lacks ..." or "<where>'s <key> is ..."."""
    missing = [key for key, (_, _, required) in fields.items() if required and key not in section]
    if missing:
        return f"{where} lacks {', '.join(missing)}"
    for key, (test, what, _) in fields.items():
        if key in section and not test(section[key]):
            return f"{where}'s {key} is {_shown(section[key])}, not {what}"
    return None


def _shown(value: Any) -> str:
    """A value as the JSON file has it, cut short: a hand edit may have pasted anything."""
    text = json.dumps(value, allow_nan=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


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
