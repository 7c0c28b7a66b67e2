"""Which files a run owns, and the rules that keep one run from losing or overwriting another's.

- Names (``leantrain/naming.py``): a derived run name carries a short hash of the settings that change
  results, so two runs with different settings in one folder never share a file; names become file
  names only when safe, and a path that would leave the folder is refused (``inside``).
- While a process writes a run, it holds an ``fcntl`` lock on ``.<run>.lock``; a second process writing
  the same run fails at once with one line. The kernel releases the lock when the process ends, however.
- A finished result is never replaced and an interrupted run's checkpoint never restarted from scratch
  without ``force``; resuming checks that the settings match and names the keys that differ.
- ``train --resume DIR`` continues the one interrupted run in DIR, or the one ``--run-name`` picks; a checkpoint
  continues the run named in its own settings, so one renamed to another run's file name is refused.
- A finished record is final: resuming a finished run finds nothing to resume (``FinishedRecord``), and a checkpoint a
  kill left beside the record (after it was written, before the checkpoint went) is stale and removed. A checkpoint
  of a forced retraining over the record (``replaces``: the record's fingerprint) is not stale: it resumes.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from leantrain.config import RunConfig
from leantrain.errors import UsageError
from leantrain.fileio import clean_stale_temporaries, is_temporary
from leantrain.naming import NOT_IDENTITY, check_name, derived_name, safe_part, settings_hash
from leantrain.train import checkpoint
from leantrain.train.checkpoint import SUFFIX

__all__ = ["NOT_IDENTITY", "check_name", "derived_name", "safe_part", "settings_hash", "inside", "run_lock",
           "check_existing", "check_record_settings", "differing_keys", "RunLocked", "resume_checkpoint",
           "check_checkpoint_name", "FinishedRecord", "finished_record", "settle_finished", "run_checkpoints",
           "record_fingerprint", "clean_run_temporaries", "AGAIN"]

AGAIN = "to train it again, drop --resume and add --force"  # what a command line does with a finished run

MEMBER = re.compile(r"\.member\d+$")  # an ensemble member's checkpoint: <run>.member<rank>.ckpt


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
        raise UsageError(f"{ckpt} holds an interrupted run; continue it with --resume (leantrain train --resume "
                         f"{ckpt.parent} --run-name {checkpoint_run(ckpt)}), or start over with --force")


def checkpoint_run(path: Path) -> str:
    """The run a checkpoint file is named for: ``<run>.ckpt``, or ``<run>.member<rank>.ckpt`` (an ensemble's)."""
    return MEMBER.sub("", path.name.removesuffix(SUFFIX))


def resume_checkpoint(folder: Path, run_name: str | None) -> Path:
    """The checkpoint ``train --resume DIR [--run-name NAME]`` continues: the one run's in DIR, or NAME's."""
    if not folder.is_dir():
        raise UsageError(f"--resume {folder}: no such folder")
    found = sorted(p for p in folder.glob(f"*{SUFFIX}") if not is_temporary(p))  # not a killed writer's
    runs = sorted({checkpoint_run(p) for p in found})
    if run_name is not None:
        mine = [p for p in found if checkpoint_run(p) == run_name]
        if not mine:
            raise UsageError(f"--resume {folder} --run-name {run_name}: no checkpoint {run_name}{SUFFIX} in "
                             f"{folder}; its interrupted runs: {', '.join(runs) or 'none'}")
        return mine[0]
    if not runs:
        raise UsageError(f"--resume {folder}: no interrupted run there (no *{SUFFIX} checkpoint)")
    if len(runs) > 1:
        raise UsageError(f"--resume {folder} holds {len(runs)} interrupted runs ({', '.join(runs)}); pick one with "
                         f"--resume {folder} --run-name NAME")
    return found[0]


def check_checkpoint_name(path: Path, run_name: str, expected: str | None = None) -> None:
    """A checkpoint holds the run its saved settings name (``run_name``), and a run resumes from ``<its name>.ckpt``:
    one renamed to another run's file name would resume nothing, or resume the wrong run. ``expected``: the run it is
    read for (by default, the one its file is named for)."""
    named = expected or checkpoint_run(path)
    if named != run_name:
        member = MEMBER.search(path.name.removesuffix(SUFFIX))
        original = f"{run_name}{member.group() if member else ''}{SUFFIX}"
        raise UsageError(f"checkpoint {path} holds run {run_name} (the name in its saved settings), not {named}: "
                         f"rename it back to {original}")


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


def run_checkpoints(folder: Path, run_name: str) -> list[Path]:
    """The run's checkpoints in ``folder``: ``<run>.ckpt``, or an ensemble's ``<run>.member<rank>.ckpt``."""
    found = folder.glob(f"{glob.escape(run_name)}*{SUFFIX}")  # a name may hold *, ? or [
    return sorted(p for p in found if checkpoint_run(p) == run_name and not is_temporary(p))


def clean_run_temporaries(folder: Path, run_name: str) -> None:
    """A killed writer's temporaries of the run (record, checkpoints, model files; an ensemble member's too).
    Call only while holding the run's lock."""
    run = glob.escape(run_name)  # stems are glob patterns
    for stem in (run, f"{run}.member*", f"{run}.model", f"{run}.member*.model"):  # model files: .<run>.model.tmp*
        clean_stale_temporaries(folder, stem)


def record_fingerprint(record: Path) -> str | None:
    """The record's content hash, or None without one: a forced retraining's checkpoints name the record they
    replace, so a checkpoint beside a record tells whether it came before the record (stale) or after (a retraining)."""
    try:
        return hashlib.sha256(record.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


class FinishedRecord(dict[str, Any]):
    """A finished run's record as found (empty if unreadable), with its ``path`` and the stale checkpoints
    ``removed`` beside it: what resuming a finished run gives back instead of training it again."""

    def __init__(self, path: Path, removed: Sequence[Path] = ()):
        super().__init__(_json_object(path))
        self.path, self.removed = path, tuple(removed)

    @property
    def removed_note(self) -> str:
        names = ", ".join(p.name for p in self.removed)
        return f"removed the stale checkpoint {names} beside it" if self.removed else ""

    def message(self, then: str = AGAIN) -> str:
        removed = f"; {self.removed_note}" if self.removed else ""
        return f"run {self.path.stem} in {self.path.parent} is finished ({self.path}); nothing to resume{removed}; {then}"


def _json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def finished_record(folder: Path, run_name: str) -> FinishedRecord | None:
    """The run's record when it is finished, its stale checkpoints removed; None when there is no record, or when a
    checkpoint beside it is a forced retraining over it (that resumes). Call only while holding the run's lock:
    then no writer of the run is alive, and a checkpoint older than the record is a kill's leftover."""
    record = inside(folder, f"{run_name}.json")
    fingerprint = record_fingerprint(record)
    if fingerprint is None:
        return None
    found = run_checkpoints(folder, run_name)
    if any(checkpoint.load(p).get("replaces") == fingerprint for p in found):
        return None
    for path in found:
        path.unlink(missing_ok=True)
    return FinishedRecord(record, found)


def settle_finished(folder: Path, run_name: str) -> FinishedRecord | None:
    """``finished_record`` under the run's lock (a writer of the run still alive makes it fail at once, RunLocked);
    None, and nothing made, when the folder does not exist."""
    if not folder.is_dir():
        return None
    with run_lock(folder, run_name):
        clean_run_temporaries(folder, run_name)
        return finished_record(folder, run_name)
