"""Start N local workers the way torchrun does (torch.distributed's elastic launcher), from inside leantrain.

``leantrain train ... --parallel ddp --procs N`` and experiment runs with ``procs = N`` come here: the
same ``leantrain`` command runs again in N worker processes, which find their rank in torchrun's
variables. The rendezvous is torchrun's ``--standalone`` one (c10d on localhost, port 0: the OS picks a
free port). Workers inherit the terminal; only rank 0 prints. The launcher's own log lines are kept
quiet, and a failed worker's exit status becomes ours (2 for a usage error, 128+N for signal N).
"""
from __future__ import annotations

import logging
import os
import sys
import uuid
import warnings

from leantrain.errors import UsageError


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


def run_local_workers(procs: int, python_args: list[str], *, max_restarts: int = 0) -> int:
    """Run ``python <python_args>`` (e.g. ``-m leantrain train ...``) in ``procs`` workers; returns the job's exit status."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    check_procs(procs)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=procs, run_id=f"leantrain-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=max_restarts, monitor_interval=0.1,
    )
    try:
        elastic_launch(config, sys.executable)(*python_args)
    except ChildFailedError as e:
        return exit_status([failure.exitcode for failure in e.failures.values()])
    return 0


def exit_status(codes: list[int]) -> int:
    """One status for the job: a usage error (2) wins, else the first failure; a signal N reads as 128+N."""
    failed = [code if code >= 0 else 128 - code for code in codes if code != 0]
    if not failed:
        return 0
    return 2 if 2 in failed else failed[0]
