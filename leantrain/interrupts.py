"""SIGTERM and Ctrl-C at any moment: the run unwinds, and the one line said at the end is true.

SIGTERM (what schedulers, ``scancel``, torchrun and ``kill`` send) raises ``Terminated``, a KeyboardInterrupt, so
both signals unwind alike: atomic writes abandon their temporaries and the last complete checkpoint stays. The
handler is installed before anything slow is imported (``leantrain`` imports torch lazily), so a signal during
start-up is the same one line (inside an import it ends the process at once: see ``_stop``). ``stopped_line``
says "the last checkpoint is kept" only when one is: the run tells this module where its checkpoint lives
(``watch_checkpoint``) as soon as it knows.
"""
from __future__ import annotations

import glob
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

TERMINATED_STATUS = 143  # 128 + SIGTERM, as a shell reports a process the signal ended
INTERRUPTED_STATUS = 130  # 128 + SIGINT

_watched: tuple[Path, str] | None = None  # (folder, run name) of the current run's checkpoint


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwinding like Ctrl-C."""


def _stop(signum: int, frame: FrameType | None) -> None:
    stop = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    if _importing(frame):
        # Raised inside an import, the exception can be swallowed on its way out (a finaliser, a library's own
        # handler) and leave the module half made: the run would go on and crash in it later. Nothing is being
        # written while modules load, so end here, as the unwinding would have.
        print(stopped_line(stop), file=sys.stderr, flush=True)
        os._exit(status(stop))
    raise stop


def _importing(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def install() -> Callable[[], None]:
    """SIGTERM raises Terminated and SIGINT KeyboardInterrupt (main thread only); returns what puts them back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {signal.SIGTERM: signal.signal(signal.SIGTERM, _stop),
                                signal.SIGINT: signal.signal(signal.SIGINT, _stop)}

    def restore() -> None:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)

    return restore


def watch_checkpoint(folder: Path | None, run_name: str = "") -> None:
    """Where the current run checkpoints (``folder/<run>.ckpt``, or its ensemble members' ``<run>.member<r>.ckpt``);
    None: it keeps none. For the line said when the run is stopped."""
    global _watched
    _watched = (folder, run_name) if folder is not None else None


def status(stop: KeyboardInterrupt) -> int:
    return TERMINATED_STATUS if isinstance(stop, Terminated) else INTERRUPTED_STATUS


def stopped_line(stop: KeyboardInterrupt) -> str:
    """``leantrain: terminated (SIGTERM); ...`` with what is left to resume from."""
    how = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
    return f"leantrain: {how}; {checkpoint_note()}"


def checkpoint_note() -> str:
    kept = kept_checkpoints()
    if kept:
        return f"the last checkpoint is kept for --resume: {kept[0] if len(kept) == 1 else kept[0].parent}"
    return "no checkpoint was written"


def kept_checkpoints() -> list[Path]:
    if _watched is None:
        return []
    folder, run = _watched
    pattern = glob.escape(run)  # the suffix is checkpoint.SUFFIX, not imported: this module loads before torch
    return sorted(p for p in [*folder.glob(f"{pattern}.ckpt"), *folder.glob(f"{pattern}.member*.ckpt")] if p.is_file())
