"""Shared pieces of the fault-injection suite: tiny runs, taps on the loop, and a subprocess runner."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import torch

import leantrain as lt
from leantrain.data import from_tensors
from leantrain.models.mlp import MLP
from leantrain.techniques import Technique

REPO = Path(__file__).resolve().parents[2]
TIMING_KEYS = {"time_s", "val_time_s", "compile_s", "val_compile_s", "train_steps_per_s", "val_steps_per_s",
               "overall_steps_per_s", "samples_per_s", "train_tokens_per_s", "val_tokens_per_s", "overall_tokens_per_s",
               "foreign_cpu_cores", "utilisation"}


class LossTap(Technique):
    """Every finished step's mean loss, as the loop recorded it (restored ones included, on resume)."""

    name = "loss-tap"

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_fit_end(self, state) -> None:
        self.losses = list(state.step_losses)


class StopAtStep(Technique):
    """Interrupts training (like Ctrl-C) just before optimizer step ``step`` + 1 is drawn."""

    name = "stop-at-step"

    def __init__(self, step: int, error: type[BaseException] = KeyboardInterrupt):
        self.step, self.error = step, error

    def before_step(self, state) -> None:
        if state.step == self.step:
            raise self.error


def tiny_data(n: int = 400, features: int = 12, classes: int = 8) -> lt.data.Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    return from_tensors(x, (x @ torch.randn(features, classes, generator=g)).argmax(1))


def tiny_model(features: int = 12, classes: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)
    return MLP(features, classes, hidden=16, depth=2, dropout=0.1)  # dropout: the RNG must be restored too


def untimed(epochs: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in epochs]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def leantrain_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -m leantrain ARGS`` in a fresh process (this checkout first on the path): for signals and kills."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "leantrain", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def cli(*args: str) -> subprocess.CompletedProcess:
    """``leantrain ARGS`` in this process (fast: no torch import), with its exit status and stderr."""
    from leantrain.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def python_script(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("leantrain: error:") and "Traceback" not in stderr, stderr
    return lines[0]


def leantrain_process(*args: str) -> subprocess.Popen:
    """``python -m leantrain ARGS`` started in its own session, no launcher variables inherited: a user's command
    whose workers the test finds (``worker_pids``) and signals."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_", "OMPI_COMM"))}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "leantrain", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def descendants(root: int) -> set[int]:
    """Every process below ``root`` (Linux's /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def worker_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """rank -> pid of the launcher's worker processes (their rank read from their environment)."""
    ranks = {}
    for pid in descendants(launcher.pid):
        try:
            if b"leantrain.train.worker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            env = dict(item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item)
        except OSError:
            continue
        rank = env.get(b"RANK") or env.get(b"OMPI_COMM_WORLD_RANK")
        if rank is not None:
            ranks[int(rank)] = pid
    return ranks


def mpi_available() -> bool:
    """mpi4py and an mpirun to launch it (the ``leantrain[mpi]`` extra)."""
    try:
        import mpi4py  # noqa: F401

        from leantrain.parallel.mpirun import mpirun_path

        mpirun_path()
    except Exception:
        return False
    return True

