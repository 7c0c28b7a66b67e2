"""Durable, atomic writes: a reader (or a crash, or a full disk) never sees half a file.

A write goes to a temporary file beside the target (``.<stem>.tmp<pid><suffix>``), is fsynced, renamed over
the target, and the folder is fsynced so the rename itself survives a power cut. Until the rename the
previous file stays whole. Temporaries a killed process left behind are never read (their names start
with a dot) and are removed by ``clean_stale_temporaries``.
"""
from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from leantrain.errors import UsageError

TEMP_MARK = ".tmp"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; fsynced and renamed onto ``path`` only if the block succeeds."""
    tmp = path.with_name(f".{path.stem}{TEMP_MARK}{os.getpid()}{path.suffix}")  # keep the suffix: savefig reads it
    try:
        try:
            yield tmp
            _fsync_file(tmp)
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except OSError as e:
            raise _disk_error(e, path) from None
    finally:
        tmp.unlink(missing_ok=True)


def _disk_error(e: OSError, path: Path) -> OSError | UsageError:
    """A full disk or quota is the user's to fix: one line naming the file; the previous file is untouched."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return UsageError(f"no space left on the device writing {path}; the previous version (if any) is kept")
    if e.errno in (errno.EACCES, errno.EROFS):
        return UsageError(f"cannot write {path} ({e.strerror})")
    return e


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: str | bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode())


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=1, allow_nan=True) + "\n")


def is_temporary(path: Path) -> bool:
    """Our temporaries and other hidden files (launch specs, locks): never results, never checkpoints."""
    return path.name.startswith(".")


def clean_stale_temporaries(folder: Path, stem: str) -> list[Path]:
    """Remove ``.<stem>.tmp*`` files a killed writer left; call only while holding the run's lock."""
    removed = []
    for path in folder.glob(f".{stem}{TEMP_MARK}*"):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def prepare_output_dir(folder: Path) -> Path:
    """Create the folder if needed and prove it is writable, before any work is done."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".leantrain-write-test{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"output folder {folder} is not writable ({e.strerror or e})") from None
    return folder
