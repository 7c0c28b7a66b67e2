"""A user's own data files, by path: ``csv:path=FILE,target=COLUMN``, ``npy:x=X.npy,y=Y.npy``, ``pt:path=FILE``.

Each reads into memory and holds out a seeded ``val_fraction`` for validation (``npy`` also takes
``x_val=``/``y_val=``; a ``.pt`` file may hold ``x_val``/``y_val``). ``task`` is ``classification`` (integer
labels 0..C-1) or ``regression`` (float targets). Not given, it is classification, except that targets with
fractional values are refused naming ``task=regression``, and whole numbers that read as a quantity (many
distinct values, few samples each or a sparse range: ``targets.py``) are refused naming both tasks. Paths with
``,`` or ``:`` cannot be written in a spec; rename or link the file.
"""
from __future__ import annotations

import csv as csv_module
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leantrain.data.dataset import Dataset
from leantrain.data.registry import DATASETS
from leantrain.data.targets import check_task, resolve_task
from leantrain.data.user import as_tensor, tensors_dataset
from leantrain.errors import UsageError


def _file(kind: str, key: str, path: str) -> Path:
    if not path:
        raise UsageError(f"data set {kind!r} needs {key}=FILE")
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"data set {kind!r}: {key}={path!r} is not a file")
    return file


def _targets(kind: str, y: torch.Tensor, task: str | None, what: str) -> torch.Tensor:
    """Labels as int64 for classification, given or not (only when every value is a whole number); floats for
    regression."""
    if task is not None:
        check_task(task)
    if task == "regression":
        return y.float() if not y.is_floating_point() else y
    if y.is_floating_point():
        if not torch.isfinite(y).all() or (y != y.round()).any():
            raise UsageError(f"data set {kind!r}: {what} holds non-integer values, so it cannot be class labels; "
                             "add task=regression")
        return y.long()
    return y


@DATASETS.register("csv", "your CSV file with a header row: csv:path=FILE,target=COLUMN[,task=regression,val_fraction=0.2]")
def csv_file(*, seed: int = 0, path: str = "", target: str = "", task: str | None = None,
             val_fraction: float = 0.2) -> Dataset:
    """Every column but ``target`` is a feature (numbers only); regression targets have shape (N, 1)."""
    file = _file("csv", "path", path)
    with file.open(newline="") as handle:
        rows = list(csv_module.reader(handle))
    if len(rows) < 2:
        raise UsageError(f"data set 'csv': {file} needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if target not in header:
        raise UsageError(f"data set 'csv': target={target!r} is not a column of {file.name}; columns: {', '.join(header)}")
    values = np.empty((len(rows) - 1, len(header)), dtype=np.float64)
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise UsageError(f"data set 'csv': {file.name} line {line} has {len(row)} fields, the header {len(header)}")
        try:
            values[line - 2] = [float(v) for v in row]
        except ValueError:
            bad = next(v for v in row if not _is_number(v))
            raise UsageError(f"data set 'csv': {file.name} line {line} holds {bad!r}, not a number (columns must be "
                             "numeric)") from None
    column = header.index(target)
    x = torch.from_numpy(np.delete(values, column, axis=1)).float()
    y = _targets("csv", torch.from_numpy(values[:, column]), task, f"column {target!r}")
    task = resolve_task(task, y, f"data set 'csv': column {target!r} of {file.name}", quote="")
    if task == "regression":
        y = y.float()[:, None]
    return tensors_dataset(x, y, val=None, val_fraction=val_fraction, seed=seed, name=file.stem, task=task)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_npy(key: str, path: str) -> torch.Tensor:
    file = _file("npy", key, path)
    try:
        return as_tensor(np.load(file, allow_pickle=False), f"{key}={file.name}")
    except ValueError as e:
        raise UsageError(f"data set 'npy': {key}={file.name} is not a plain .npy array ({e})") from None


@DATASETS.register("npy", "your numpy arrays: npy:x=X.npy,y=Y.npy[,x_val=...,y_val=...,task=regression]")
def npy_files(*, seed: int = 0, x: str = "", y: str = "", x_val: str = "", y_val: str = "",
              task: str | None = None, val_fraction: float = 0.2) -> Dataset:
    inputs, targets = _load_npy("x", x), _targets("npy", _load_npy("y", y), task, "y")
    task = resolve_task(task, targets, f"data set 'npy': y={Path(y).name}", quote="")
    val = None
    if x_val or y_val:
        val = (_load_npy("x_val", x_val), _targets("npy", _load_npy("y_val", y_val), task, "y_val"))
    return tensors_dataset(inputs, targets, val=val, val_fraction=val_fraction, seed=seed, name=Path(x).stem, task=task)


@DATASETS.register("pt", "your tensors saved with torch.save: pt:path=FILE holding {'x', 'y'[, 'x_val', 'y_val']} or (x, y)")
def pt_file(*, seed: int = 0, path: str = "", task: str | None = None, val_fraction: float = 0.2) -> Dataset:
    file = _file("pt", "path", path)
    try:
        saved: Any = torch.load(file, weights_only=True, map_location="cpu")  # tensors only: no code runs
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix, in one line
        raise UsageError(f"data set 'pt': {file.name} is not a tensor file torch.load can read safely "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})") from None
    if isinstance(saved, (tuple, list)) and len(saved) == 2:
        saved = {"x": saved[0], "y": saved[1]}
    if not isinstance(saved, dict) or not {"x", "y"} <= saved.keys():
        raise UsageError(f"data set 'pt': {file.name} must hold a dict with 'x' and 'y' (and optionally 'x_val', "
                         "'y_val'), or an (x, y) pair")
    y = _targets("pt", as_tensor(saved["y"], "y"), task, "y")
    task = resolve_task(task, y, f"data set 'pt': y of {file.name}", quote="")
    val = None
    if "x_val" in saved or "y_val" in saved:
        val = (saved.get("x_val"), _targets("pt", as_tensor(saved.get("y_val"), "y_val"), task, "y_val"))
    return tensors_dataset(saved["x"], y, val=val, val_fraction=val_fraction, seed=seed, name=file.stem, task=task)
