"""Checkpoints: written atomically at each epoch end, read back with a clear error when they are not ours."""
from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import torch

from leantrain.errors import UsageError
from leantrain.fileio import atomic_path

FORMAT = 1
SUFFIX = ".ckpt"


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file beside the target, then rename: a crash never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)


def load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}")
    try:
        # weights_only: a checkpoint is tensors and plain data; never unpickle arbitrary objects.
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise UsageError(f"checkpoint {path} is corrupt or not a leantrain checkpoint ({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UsageError(f"checkpoint {path} is not a leantrain checkpoint of format {FORMAT}")
    return payload


def find(folder: Path) -> Path:
    """The single checkpoint in a run folder (for ``--resume DIR``)."""
    if not folder.is_dir():
        raise UsageError(f"--resume {folder}: no such folder")
    found = sorted(folder.glob(f"*{SUFFIX}"))
    if len(found) != 1:
        listing = ", ".join(p.name for p in found) or "none"
        raise UsageError(f"--resume {folder}: expected one *{SUFFIX} checkpoint, found {listing}")
    return found[0]


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(_flatten(random.getstate()))}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, *internal, gauss = states["python"]
    random.setstate((version, tuple(internal), None if gauss == "none" else gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _flatten(python_state: tuple) -> list:
    version, internal, gauss = python_state
    return [version, *internal, "none" if gauss is None else gauss]
