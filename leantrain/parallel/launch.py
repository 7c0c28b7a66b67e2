"""Start N local workers the way torchrun does (torch.distributed's elastic launcher), from inside leantrain.

``leantrain train ... --parallel ddp --procs N`` and experiment runs with ``procs = N`` come here: the
same ``leantrain`` command runs again in N worker processes, which find their rank in torchrun's
variables. The rendezvous is torchrun's ``--standalone`` one (c10d on localhost, port 0: the OS picks a
free port). Workers inherit the terminal; only rank 0 prints. The launcher's own log lines are kept
quiet: a failed job is one line, its cause (see failures.py), and its exit status becomes ours (2 for a usage
error, 128+N for signal N). A worker that hangs is killed ``HUNG_WORKER_GRACE_S`` after another stated the job's failure.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import uuid
import warnings
from pathlib import Path

from leantrain.errors import UsageError
from leantrain.interrupts import Terminated
from leantrain.parallel.failures import Failure, cause, failure_dir, with_reasons


def cores_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_procs(procs: int) -> None:
    if procs <= 0:
        raise UsageError(f"--procs must be a positive integer, got {procs}")
    if procs > cores_available():
        warnings.warn(f"--procs {procs} is more than the {cores_available()} cores here: the workers will share cores",
                      RuntimeWarning, stacklevel=2)


def run_local_workers(procs: int, python_args: list[str], *, max_restarts: int = 0, verbose: bool = False) -> None:
    """Run ``python <python_args>`` (e.g. ``-m leantrain train ...``) in ``procs`` workers until they all end.

    A failed job raises WorkersFailed with its cause (see failures.py); SIGTERM or Ctrl-C to this process is passed
    to the workers, waited for, and raised again here (Terminated / KeyboardInterrupt)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    check_procs(procs)
    _quiet_elastic(verbose)
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=procs, run_id=f"leantrain-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=max_restarts, monitor_interval=0.1,
        shutdown_timeout=SHUTDOWN_GRACE_S,
    )
    with failure_dir() as reasons, HungWorkerReaper(reasons):
        try:
            elastic_launch(config, sys.executable)(*python_args)
        except ChildFailedError as e:
            codes = {rank: failure.exitcode for rank, failure in e.failures.items()}
            raise WorkersFailed(with_reasons(codes, reasons)) from None
        except SignalException as e:  # the agent has stopped the workers with the same signal
            raise (Terminated() if e.sigval == signal.SIGTERM else KeyboardInterrupt()) from None


SHUTDOWN_GRACE_S = 3  # a stopped worker unwinds in well under this; one that is hung (or SIGSTOPped) is then killed
# The reaper's grace counts from a worker's stated failure, and the hang it ends already waited --dist-timeout: 1 s
# keeps a hung job's end within --dist-timeout + 5 s on a loaded machine (3 s left it ~0.7 s inside on a quiet one).
# A sibling killed on its way out loses nothing the report needs: its stated reason wins, and checkpoints are
# written atomically. (SIGTERM or Ctrl-C to the launcher keeps SHUTDOWN_GRACE_S: torch elastic's shutdown_timeout.)
HUNG_WORKER_GRACE_S = 1


class WorkersFailed(Exception):
    """The job's failed workers; ``failure``: the one to report, ``status``: the job's exit status (``status``
    given: the launcher's own, used when no worker's failure is known)."""

    def __init__(self, failures: list[Failure], status: int = 1):
        self.failures = failures
        self.failure = cause(failures)
        super().__init__(self.failure.line() if self.failure else f"the workers failed (exit status {status})")
        self._status = status

    @property
    def status(self) -> int:
        if self.failure is None:
            return self._status
        code = self.failure.exit_code
        return 128 - code if code < 0 else code or 1


class HungWorkerReaper:
    """Kills the workers still alive ``HUNG_WORKER_GRACE_S`` after one of them stated why it failed.

    torch elastic gives a worker that ignores SIGTERM 30 s before it kills it, and a hung or SIGSTOPped worker
    ignores it: a hang would end 30 s past ``--dist-timeout``. A worker that writes a reason (failures.py) is on
    its way out and the job will stop; whoever of its siblings is left after the grace period is hung."""

    def __init__(self, reasons: Path):
        self.reasons = reasons
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="leantrain-reaper", daemon=True)

    def __enter__(self) -> HungWorkerReaper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1)

    def _watch(self) -> None:
        seen: set[tuple[str, float]] = set()
        while not self._stop.wait(0.1):
            stated = {(p.name, p.stat().st_mtime) for p in self.reasons.glob("rank*.txt")}
            if stated <= seen:
                continue
            seen |= stated
            workers = child_pids()  # this job's (a restarted job's workers are new processes)
            if self._stop.wait(HUNG_WORKER_GRACE_S):
                return
            for pid in workers & child_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def child_pids() -> set[int]:
    """This process's children (Linux's /proc; elsewhere none are known)."""
    me, found = str(os.getpid()), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(command name)": state, ppid, ...
        except (OSError, IndexError):
            continue
        if fields[1] == me:
            found.add(int(stat.parent.name))
    return found


def _quiet_elastic(verbose: bool) -> None:
    """torch elastic's loggers set their own levels (from LOGLEVEL) as each module is imported: silence each one,
    since the job's cause is said in one line; ``--verbose`` keeps its reports and tracebacks."""
    import logging

    level = logging.INFO if verbose else logging.CRITICAL + 1
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic") or name.startswith("torch.distributed.launcher"):
            logging.getLogger(name).setLevel(level)
