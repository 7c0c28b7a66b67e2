"""Which files a run owns, and the rules that keep one run from losing or overwriting another's.

- Names (``leantrain/naming.py``): a derived run name carries a short hash of the settings that change
  results, so two runs with different settings in one folder never share a file; names become file
  names only when safe, and a path that would leave the folder is refused (``inside``).
- While a process writes a run, it holds an ``fcntl`` lock on ``.<run>.lock``; a second process writing
  the same run fails at once with one line. The kernel releases the lock when the process ends, however.
- A finished result is never replaced and an interrupted run's checkpoint never restarted from scratch
  without ``force``; resuming checks that the settings match and names the keys that differ.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from leantrain.config import RunConfig
from leantrain.errors import UsageError
from leantrain.naming import NOT_IDENTITY, check_name, derived_name, safe_part, settings_hash

__all__ = ["NOT_IDENTITY", "check_name", "derived_name", "safe_part", "settings_hash", "inside", "run_lock",
           "check_existing", "check_record_settings", "differing_keys", "RunLocked"]


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
    """The settings that change results and differ; a key one side lacks (a setting added to leantrain after
    that side was written) counts as its default, so an older checkpoint or record still matches."""
    defaults = RunConfig().to_dict()
    return sorted(k for k in saved.keys() | now.keys()
                  if k not in NOT_IDENTITY and saved.get(k, defaults.get(k)) != now.get(k, defaults.get(k)))


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
