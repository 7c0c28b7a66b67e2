"""Checkpoints: written atomically and durably, with a checksum verified on load.

File layout: one header line ``LEANTRAIN-CHECKPOINT <format> sha256=<hex>\\n``, then the ``torch.save`` bytes.
The checksum covers those bytes, so a bit flip or a truncated copy is named as such instead of loading
silently or failing inside the unpickler. The write goes through ``fileio.atomic_path``: the previous
checkpoint stays whole until the new one is complete and fsynced.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import torch

from leantrain.errors import UsageError
from leantrain.fileio import write_atomic

FORMAT = 2
SUFFIX = ".ckpt"
MAGIC = b"LEANTRAIN-CHECKPOINT"
# What a resume reads of every training checkpoint (training_state.snapshot writes them; "rng_per_rank" too, read
# when several workers wrote it). A payload without one was altered: say so before a KeyError deep in a resume.
KEYS = ("config", "epoch", "step", "samples_seen", "accum_steps", "records", "step_losses", "progress", "guards",
        "model", "optimizer", "techniques", "rng")


def encode(payload: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    body = buffer.getvalue()
    return MAGIC + f" {FORMAT} sha256={hashlib.sha256(body).hexdigest()}\n".encode() + body


def save(path: Path, payload: dict[str, Any]) -> None:
    """Serialise in memory (to checksum it), then write atomically: a crash never leaves half a checkpoint."""
    write_atomic(path, encode(payload))


def load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UsageError(f"checkpoint {path} cannot be read ({e.strerror})") from None
    header, _, body = raw.partition(b"\n")
    parts = header.split(b" ")
    if len(parts) != 3 or parts[0] != MAGIC or not parts[2].startswith(b"sha256="):
        raise UsageError(f"checkpoint {path} is corrupt or not a leantrain checkpoint (no format-{FORMAT} header)")
    if parts[1] != str(FORMAT).encode():
        raise UsageError(f"checkpoint {path} has format {parts[1].decode(errors='replace')}; this leantrain reads {FORMAT}")
    if hashlib.sha256(body).hexdigest().encode() != parts[2][len(b"sha256="):]:
        raise UsageError(f"checkpoint {path} is corrupt (checksum mismatch: truncated or altered); "
                         "delete it to start over, or restore a copy")
    try:
        # weights_only: a checkpoint is tensors and plain data; never unpickle arbitrary objects.
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise UsageError(f"checkpoint {path} is corrupt or not a leantrain checkpoint ({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UsageError(f"checkpoint {path} is not a leantrain checkpoint of format {FORMAT}")
    _check_keys(path, payload)
    return payload


def _check_keys(path: Path, payload: dict[str, Any]) -> None:
    several = isinstance(payload.get("world_size"), int) and payload["world_size"] > 1
    missing = [key for key in (*KEYS, *(["rng_per_rank"] if several else [])) if key not in payload]
    if missing:
        raise UsageError(f"checkpoint {path} lacks {', '.join(map(repr, missing))} (altered, or not written by a "
                         "training run); delete it to start over, or restore a copy")


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
