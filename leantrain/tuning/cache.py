"""Tuned choices on disk, keyed by everything they depend on, so that a probe costs once per machine and model.

The key holds the machine (CPU model, PyTorch's CPU capability and thread count, or the GPU's name), the
PyTorch version, the model's parameter shapes, the input's shape and type, the batch size and the task:
change any of them and the choice is measured again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leantrain.fileio import write_json
from leantrain.machine import machine_key
from leantrain.train.metrics import cache_dir

FILE = "autotune.json"


def model_signature(model: nn.Module) -> str:
    """A short hash of the parameter names, shapes and types (not their values: training does not change it)."""
    shapes = [(name, tuple(p.shape), str(p.dtype), p.requires_grad) for name, p in model.named_parameters()]
    return hashlib.sha1(repr((type(model).__name__, shapes)).encode()).hexdigest()[:16]


def key(knob: str, device: torch.device, model: nn.Module, **facts: Any) -> str:
    extra = "|".join(f"{k}={v}" for k, v in sorted(facts.items()))
    return f"{knob}|{machine_key(device)}|model={model_signature(model)}|{extra}"


def _path() -> Path:
    return cache_dir() / FILE


def _read() -> dict[str, Any]:
    try:
        return json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}


def load(entry_key: str) -> dict[str, Any] | None:
    found = _read().get(entry_key)
    return found if isinstance(found, dict) else None


def store(entry_key: str, entry: dict[str, Any]) -> None:
    cached = _read()  # another process may have written meanwhile: merge, do not overwrite
    cached[entry_key] = entry
    _path().parent.mkdir(parents=True, exist_ok=True)
    write_json(_path(), cached)
