"""A deadline for blocking collectives that have none of their own (mpi4py's): a hung or dead rank ends the job.

A gloo or NCCL collective fails after the process group's timeout; an MPI ``Allreduce`` waits for a missing rank
forever, spinning at 100% CPU (a rank stopped with SIGSTOP, deadlocked, or swapped out). So each blocking MPI call
runs inside ``watchdog.waiting("Allreduce")``; a daemon thread looks at the clock a few times a second and, once a
call has waited longer than the timeout, calls ``on_timeout`` once — which says why in one line and calls
``MPI_Abort``, after which Open MPI ends every rank, a stopped one included. mpi4py releases the GIL while it waits
in MPI, so the thread gets to run; mpi4py initialises MPI with ``MPI_THREAD_MULTIPLE``, so it may call MPI_Abort.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class CollectiveWatchdog:
    """``on_timeout(what, waited_s)`` is called (from the watchdog's thread) when a ``waiting`` block overstays."""

    def __init__(self, timeout_s: float, on_timeout: Callable[[str, float], None]):
        self.timeout_s = timeout_s
        self.on_timeout = on_timeout
        # Checked often enough that the job ends within a small fraction of the timeout after the deadline.
        self.poll_s = min(0.5, timeout_s / 10)
        self._since: float | None = None  # when the current blocking call began; None: not in one
        self._what = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="leantrain-collective-watchdog", daemon=True)
            self._thread.start()
        self._what, self._since = what, time.monotonic()
        try:
            yield
        finally:
            self._since = None

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            since = self._since
            if since is not None and time.monotonic() - since > self.timeout_s:
                self.on_timeout(self._what, time.monotonic() - since)
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
