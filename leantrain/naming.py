"""Run names that are safe file names, and the short hash of the settings that change a run's results.

A derived name is ``<data>-<model>-s<seed>-<hash>``: the hash keeps two runs with different settings in one
folder apart. A path inside a data spec becomes its last part plus a hash (no folders in file names); a
long part is cut and hashed. A name the user gives is used as is, so it must already be a plain file name.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from leantrain.errors import UsageError

# Settings that never change what a run computes: they stay out of its identity. Some change how it is computed,
# so the last bits of its sums may differ (threads, DDP's buckets, trim_padding: the same batches, less padding).
NOT_IDENTITY = frozenset({"name", "target", "dist_timeout", "checkpoint_every", "procs", "backend", "threads",
                          "save_model", "log", "ddp_bucket_mb", "ddp_static_graph", "ddp_grad_as_bucket_view",
                          "memory_check", "trim_padding"})
MAX_NAME = 120  # well under the usual 255-byte file-name limit, leaving room for suffixes
SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def settings_hash(settings: dict[str, Any]) -> str:
    """8 hex digits of the settings that change results (a stable JSON of them)."""
    kept = {k: v for k, v in sorted(settings.items()) if k not in NOT_IDENTITY}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:8]


PATH_VALUE = re.compile(r"[^:,=]*[/\\][^:,=]*")  # a spec value holding a path separator


def _last_part(path: str) -> str:
    return re.split(r"[/\\]", path.rstrip("/\\"))[-1]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def safe_part(text: str, limit: int = 48) -> str:
    """``text`` as a file-name part: a path value becomes its last part plus a hash (unique, and no folders);
    other unsafe characters fold to ``_``; a part longer than ``limit`` is cut and hashed."""
    shortened = PATH_VALUE.sub(lambda m: f"{_last_part(m.group())}-{_digest(m.group())}", text)
    folded = SAFE.sub("_", shortened.replace(":", "_").replace(",", "_").replace("=", "")).strip("._") or "x"
    if len(folded) <= limit:
        return folded
    return f"{folded[: limit - 9]}-{_digest(text)}"


def derived_name(data: str, model: str, seed: int, settings: dict[str, Any]) -> str:
    return f"{safe_part(data)}-{safe_part(model)}-s{seed}-{settings_hash(settings)}"


def check_name(name: str, what: str = "run name") -> str:
    """A name given by the user is used as a file name as is, so it must be one; else one line saying why."""
    if "\x00" in name:
        raise UsageError(f"{what} contains a NUL byte")
    shown = name if len(name) <= 60 else name[:57] + "..."
    if len(name.encode()) > MAX_NAME:
        raise UsageError(f"{what} {shown!r} is {len(name.encode())} bytes long; at most {MAX_NAME}")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise UsageError(f"{what} {shown!r} must be a plain file name (no '/', '\\', or leading '.'): "
                         "results stay inside --out")
    if any(ord(c) < 32 for c in name):
        raise UsageError(f"{what} {shown!r} contains control characters")
    return name


