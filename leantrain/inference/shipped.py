"""The polynomial model leantrain ships: what ``leantrain predict`` and ``leantrain evaluate`` use when no model is
named. Written by ``benchmarks/seed004_ship.py``: its weights in fp16 (half the file; loading puts them back in the
model's fp32) where the fp16 copy decoded held-out generated lines exactly as fp32 did, else in fp32.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from leantrain.errors import UsageError

SHIPPED_MODEL = "polynomial.model.pt"


def shipped_path() -> Path:
    """Where the shipped model lives in the installed package (whether or not it is there)."""
    return Path(str(resources.files("leantrain") / "shipped" / SHIPPED_MODEL))


def shipped_model() -> Path:
    """The shipped model file; one line naming what to do where this installation has none."""
    path = shipped_path()
    if not path.is_file():
        raise UsageError(f"no model named and no shipped model at {path}: name a model file or run folder "
                         "(leantrain train --save-model writes one)")
    return path


def is_model_path(path: Path) -> bool:
    """A path ``predict``'s first argument names a model by: a run folder or a ``.pt`` file; else input lines."""
    return path.is_dir() or path.suffix == ".pt"
