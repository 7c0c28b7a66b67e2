"""Which files a run owns, and the rules that keep one run from losing or overwriting another's.

- A derived run name carries a short hash of the settings that change results, so two runs with
  different settings in one folder never share a file.
- Names become file names only when safe: no separators, no NUL, bounded length (long or unsafe parts
  of a derived name are replaced by a hash); an explicit name that would leave the folder is refused.
- While a process writes a run, it holds an ``fcntl`` lock on ``.<run>.lock``; a second process writing
  the same run fails at once with one line. The kernel releases the lock when the process ends, however.
- A finished result is never replaced and an interrupted run's checkpoint never restarted from scratch
  without ``force``; resuming checks that the settings match and names the keys that differ.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from leantrain.errors import UsageError

# Settings that never change what a run computes: they stay out of its identity.
NOT_IDENTITY = frozenset({"name", "target", "dist_timeout", "checkpoint_every", "procs", "backend"})
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


def inside(folder: Path, name: str) -> Path:
    """``folder/name``, proven not to leave ``folder`` (a belt to ``check_name``'s braces)."""
    path = folder / name
    if os.path.commonpath([folder.resolve(), path.resolve()]) != str(folder.resolve()):
        raise UsageError(f"{name!r} would be written outside {folder}")
    return path


class RunLocked(UsageError):
    pass


@contextmanager
def run_lock(folder: Path, run_name: str) -> Iterator[None]:
    """Hold ``folder/.<run>.lock`` while writing the run; another holder makes this fail at once."""
    import fcntl

    path = folder / f".{run_name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise RunLocked(f"run {run_name} in {folder} is being written by another process (pid {holder}); "
                            "wait for it, or choose another --run-name or --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def differing_keys(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return sorted(k for k in saved.keys() | now.keys() if k not in NOT_IDENTITY and saved.get(k) != now.get(k))


def check_existing(result: Path, ckpt: Path | None, *, resume: bool, force: bool) -> None:
    """Refuse to replace a finished result or restart over an interrupted run's checkpoint, unless forced."""
    if force:
        return
    if result.exists() and not resume:
        raise UsageError(f"{result} already exists; pass --force to overwrite it, or choose another --out or --run-name")
    if ckpt is not None and ckpt.exists() and not resume:
        raise UsageError(f"{ckpt} holds an interrupted run; continue it with --resume, or start over with --force")


def check_record_settings(record_path: Path, settings: dict[str, Any]) -> None:
    """A finished record is reused by ``run --resume`` only when it was made with these settings."""
    try:
        record = json.loads(record_path.read_text())
        saved = record["run"]["config"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{record_path} is not a readable run record; remove it or rerun with --force") from None
    changed = differing_keys(saved, settings)
    if changed:
        raise UsageError(f"{record_path} was made with other settings ({', '.join(changed)}); "
                         "rerun with --force to replace it, or use another --out")
