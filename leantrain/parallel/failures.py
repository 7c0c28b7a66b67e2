"""Why a multi-process job stopped, said once: workers hand their reason to the launcher instead of printing it.

A job of N workers that fails would otherwise print N messages, tracebacks from the ranks that lost their peer,
and the launcher's own report. Instead leantrain's launchers (``--procs N``: torch elastic or mpirun) make a
folder and pass it in ``LEANTRAIN_FAILURE_DIR``; a worker that stops for a reason it can name writes that one line
to ``rank<R>.txt`` there and stays quiet. The launcher then picks the cause (a usage error first, then the
earliest reason, then a rank that a signal killed) and prints one line. Without the variable (torchrun, srun or
mpirun started by the user) a worker prints its reason itself, with its rank.

A rank whose peer died sees only a broken connection; that is a consequence, not a cause: ``lost_peer`` tells
those errors apart, and such a rank exits without a reason of its own.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ENV = "LEANTRAIN_FAILURE_DIR"
USAGE_ERROR = 2
# What gloo and the TCP store say when the other side went away (killed, or ended after its own error).
PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Socket Timeout",
             "recvValue failed", "failed to recv", "Connection refused")
TIMED_OUT = ("Timed out", "timed out", "Timeout", "DEADLINE_EXCEEDED")


def report(rank: int, line: str, status: int) -> None:
    """This worker's one-line reason for stopping and its exit status: to the launcher when it collects them (a
    launcher cannot always see each rank's status: mpirun reports one), else to stderr."""
    folder = os.environ.get(ENV)
    if folder and Path(folder).is_dir():
        (Path(folder) / f"rank{rank}.txt").write_text(f"{status}\t{line}")
    else:
        print(f"leantrain: error: {f'[rank {rank}] ' if rank else ''}{line}", file=sys.stderr, flush=True)


def collected() -> bool:
    """Whether a launcher collects the workers' reasons (so that a worker says nothing on stderr)."""
    return bool(os.environ.get(ENV))


def lost_peer(error: BaseException) -> bool:
    """A collective failed because another rank is gone (not this rank's own fault)."""
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in PEER_GONE)


def timed_out(error: BaseException) -> bool:
    """A collective gave up waiting for the other ranks (gloo/NCCL's own timeout)."""
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in TIMED_OUT)


def signal_text(exit_code: int) -> str:
    """``SIGKILL`` for a worker that signal 9 ended (-9, or 137 as a shell reports it); else ``exit code N``."""
    number = -exit_code if exit_code < 0 else exit_code - 128 if exit_code > 128 else 0
    try:
        return signal.Signals(number).name if number else f"exit code {exit_code}"
    except ValueError:
        return f"exit code {exit_code}"


@dataclass(frozen=True)
class Failure:
    rank: int
    exit_code: int
    reason: str | None  # the worker's own line, if it wrote one
    when: float  # when the reason was written (or the launcher saw the exit): the earliest is the cause

    def line(self) -> str:
        if self.reason:
            return self.reason if self.rank == 0 else f"rank {self.rank}: {self.reason}"
        return f"worker rank {self.rank} died ({signal_text(self.exit_code)})"


def cause(failures: list[Failure]) -> Failure | None:
    """The failure to report: a usage error (every rank says the same), else the earliest stated reason, else a rank
    a signal ended (a rank that only lost its peer states no reason). Among those, a rank killed outright by a
    signal other than SIGTERM/SIGINT comes first: those two are what a launcher sends the others once one failed."""
    def order(f: Failure) -> tuple[bool, float, int]:
        sent_by_launcher = f.exit_code >= 128 or -f.exit_code in (signal.SIGTERM, signal.SIGINT)
        return sent_by_launcher, f.when, f.rank

    usage = [f for f in failures if f.exit_code == USAGE_ERROR and f.reason]
    stated = [f for f in failures if f.reason]
    signalled = [f for f in failures if f.exit_code < 0 or f.exit_code > 128]
    for group in (usage, stated, signalled, failures):
        if group:
            return min(group, key=order)
    return None


@dataclass(frozen=True)
class Reason:
    status: int
    line: str
    when: float


def reasons(folder: Path) -> dict[int, Reason]:
    """Each rank's written reason, its exit status and when it was written."""
    found = {}
    for path in folder.glob("rank*.txt"):
        try:
            status, line = path.read_text().split("\t", 1)
            found[int(path.stem.removeprefix("rank"))] = Reason(int(status), line.strip(), path.stat().st_mtime)
        except (OSError, ValueError):
            continue
    return found


def with_reasons(exit_codes: dict[int, int], folder: Path) -> list[Failure]:
    """The failed ranks: those with a non-zero exit code the launcher saw, and those that wrote a reason."""
    written, now = reasons(folder), time.time()
    failures = []
    for rank in sorted(set(exit_codes) | set(written)):
        reason = written.get(rank)  # its stated status wins: a rank may be killed on its way out
        code = reason.status if reason else exit_codes.get(rank, 1)
        if code != 0:
            failures.append(Failure(rank, code, reason.line if reason else None, reason.when if reason else now))
    return failures


@contextmanager
def failure_dir() -> Iterator[Path]:
    """A fresh folder for the workers' reasons, named in the environment the workers inherit; removed after."""
    folder = Path(tempfile.mkdtemp(prefix="leantrain-failures-"))
    previous = os.environ.get(ENV)
    os.environ[ENV] = str(folder)
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = previous
        shutil.rmtree(folder, ignore_errors=True)
