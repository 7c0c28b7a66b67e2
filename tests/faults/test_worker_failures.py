"""A job of worker processes ends within --dist-timeout + 5 s, with one line and the right exit status, whatever
happens to a worker (hung, killed) or to the launcher (SIGTERM, Ctrl-C); under ddp (torch elastic) and mpi (mpirun).

Each test starts ``leantrain train --procs 2`` as a user would, waits until training is under way (the first
checkpoint is on disk), then acts on one worker or on the launcher.
"""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults.helpers import descendants, leantrain_process, mpi_available, untimed, worker_pids

pytestmark = pytest.mark.timeout(120)
TIMEOUT_S = 5
TRAIN = ["train", "--model", "mlp:hidden=32", "--data", "healthcare-sim:n=12000", "--batch-size", "8", "--epochs", "2",
         "--checkpoint-every", "5", "--threads", "1", "--procs", "2", "--dist-timeout", str(TIMEOUT_S), "--quiet"]


MODES = ["ddp", pytest.param("mpi", marks=pytest.mark.skipif(not mpi_available(), reason="mpi4py/mpirun absent"))]


def _start(out: Path, mode: str, *extra: str) -> subprocess.Popen:
    return leantrain_process(*TRAIN, "--parallel", mode, "--out", str(out), *extra)


def _under_way(launcher: subprocess.Popen, out: Path) -> dict[int, int]:
    """Waits for the first checkpoint; returns the workers."""
    deadline = time.monotonic() + 60
    while not [p for p in out.glob("*.ckpt") if not p.name.startswith(".")]:
        assert launcher.poll() is None, launcher.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.05)
    workers = worker_pids(launcher)
    assert sorted(workers) == [0, 1], workers
    return workers


def _end(launcher: subprocess.Popen, since: float) -> tuple[int, str, float]:
    try:
        _, err = launcher.communicate(timeout=60)
    finally:
        for pid in descendants(launcher.pid) | {launcher.pid}:  # nothing may outlive the test, whatever failed
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return launcher.returncode, err, time.monotonic() - since


def _alive(pid: int) -> bool:
    """Running or stopped; an exited process waiting to be reaped (a zombie) is not."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def _checkpoint_kept(out: Path, line: str) -> None:
    (ckpt,) = [p for p in out.glob("*.ckpt") if not p.name.startswith(".")]
    assert line.endswith(f"the last checkpoint is kept for --resume: {ckpt}"), line
    assert not list(out.glob("*.json")), "a stopped run wrote a record"


@pytest.mark.parametrize("mode", MODES)
def test_a_hung_worker_ends_the_job_within_the_timeout(tmp_path, mode):
    launcher = _start(tmp_path, mode)
    workers = _under_way(launcher, tmp_path)
    os.kill(workers[1], signal.SIGSTOP)
    status, err, took = _end(launcher, time.monotonic())
    line = _one_line(err)
    assert status == 1 and took < TIMEOUT_S + 5, (status, took, line)
    assert line.startswith("leantrain: error: ") and "hung" in line and "--dist-timeout" in line, line
    _checkpoint_kept(tmp_path, line)
    assert not any(_alive(pid) for pid in workers.values())


@pytest.mark.parametrize("mode", MODES)
def test_a_killed_worker_is_one_line_naming_its_rank_and_signal(tmp_path, mode):
    launcher = _start(tmp_path, mode)
    workers = _under_way(launcher, tmp_path)
    os.kill(workers[1], signal.SIGKILL)
    status, err, took = _end(launcher, time.monotonic())
    line = _one_line(err)
    assert status == 128 + signal.SIGKILL and took < 5, (status, took, line)
    assert line.startswith("leantrain: error: worker rank 1 died (SIGKILL)"), line
    _checkpoint_kept(tmp_path, line)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_launcher_stops_every_worker_first(tmp_path, mode, signum):
    launcher = _start(tmp_path, mode)
    workers = _under_way(launcher, tmp_path)
    launcher.send_signal(signum)
    status, err, took = _end(launcher, time.monotonic())
    line = _one_line(err)
    assert status == 128 + signum and took < 5, (status, took, line)
    how = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    assert line.startswith(f"leantrain: {how}; the last checkpoint is kept for --resume: "), line
    assert not any(_alive(pid) for pid in workers.values())
    time.sleep(1)  # nothing is written after the launcher's last line
    _checkpoint_kept(tmp_path, line)


@pytest.mark.skipif(not mpi_available(), reason="mpi4py/mpirun absent")
def test_mpi_restarts_a_killed_job_and_ends_as_if_uninterrupted(tmp_path):
    slack = ("--dist-timeout", "60")  # not about hangs: a 5 s timeout could fire on a busy machine's slow write
    clean = _start(tmp_path / "clean", "mpi", *slack)
    status, err, _ = _end(clean, time.monotonic())
    assert status == 0, err[-2000:]
    launcher = _start(tmp_path / "killed", "mpi", "--max-restarts", "1", *slack)
    workers = _under_way(launcher, tmp_path / "killed")
    os.kill(workers[1], signal.SIGKILL)
    status, err, _ = _end(launcher, time.monotonic())
    assert status == 0, err[-2000:]
    assert err.strip() == ("leantrain: worker rank 1 died (SIGKILL); restarting the workers from the last checkpoint "
                           "(1 of --max-restarts 1)"), err
    (want,), (got,) = [[json.loads(p.read_text()) for p in (tmp_path / name).glob("*.json")]
                       for name in ("clean", "killed")]
    assert untimed(got["epochs"]) == untimed(want["epochs"])
