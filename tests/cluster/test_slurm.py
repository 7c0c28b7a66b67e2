"""What Slurm gives a user, on a real single-node cluster (conftest.py): srun of DDP and of MPI (PMIx), sbatch of the
script ``leantrain slurm-script`` writes, scancel and requeue of it, and an experiment as one job per case
(``leantrain run --executor slurm``). Each result is compared with one process, as tests/parallel/ does."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from leantrain.config import RunConfig
from leantrain.train.run import execute

ROOT = Path(__file__).resolve().parents[2]
LEANTRAIN = [sys.executable, "-m", "leantrain"]
SMALL = {"model": "mlp:hidden=16", "data": "healthcare-sim:n=800", "epochs": 2}
# Long enough to stop mid-run: ~0.5 s an epoch on 2 ranks here, a checkpoint after each.
LONGER = {"model": "mlp:hidden=16", "data": "healthcare-sim:n=4000", "epochs": 6}
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}


def _run(slurm, *command: str, timeout: float = 120, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), env=slurm.env(), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _flags(settings: dict[str, Any], **more: Any) -> list[str]:
    return [text for key, value in {**settings, **more}.items() for text in (f"--{key.replace('_', '-')}", str(value))]


def _one_process(settings: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """The same run in this process, at the global batch: what the ranks must equal."""
    return execute(RunConfig.from_dict({**settings, "batch_size": batch_size}, where="test"), quiet=True)


def _assert_equal_epochs(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert len(got["epochs"]) == len(want["epochs"])
    for mine, theirs in zip(got["epochs"], want["epochs"]):
        for key in ("train_loss", "val_loss"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5), (mine["epoch"], key)


def _record(folder: Path) -> dict[str, Any]:
    import json

    (path,) = folder.glob("*.json")
    return json.loads(path.read_text())


def _sbatch(slurm, script: Path, *args: str) -> str:
    done = _run(slurm, "sbatch", "--parsable", str(script), *args, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def _state(slurm, job: str) -> str:
    done = _run(slurm, "squeue", "-h", "-t", "all", "-j", job, "-o", "%T", timeout=30)
    return done.stdout.strip()


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout_s:.0f}s for {what}"
        time.sleep(0.1)


def _stopped(log: Path) -> list[str]:
    """The ranks' lines in a job's log saying SIGTERM stopped them with their checkpoint kept."""
    text = log.read_text() if log.exists() else ""
    return re.findall(r"leantrain: terminated \(SIGTERM\); the last checkpoint is kept for --resume", text)


def _wait_ended(slurm, job: str, timeout_s: float = 90) -> str:
    _wait(lambda: _state(slurm, job) in ENDED, timeout_s, f"job {job} to end")
    return _state(slurm, job)


@pytest.mark.timeout(120)
def test_srun_ddp_equals_one_process_at_the_doubled_batch(slurm, tmp_path):
    done = _run(slurm, "srun", "-n", "2", *LEANTRAIN, "train", *_flags(SMALL, batch_size=32), "--parallel", "ddp",
                "--out", str(tmp_path), "--quiet")
    assert done.returncode == 0, done.stderr
    record = _record(tmp_path)
    assert (record["run"]["launcher"], record["run"]["world_size"]) == ("slurm", 2)
    _assert_equal_epochs(record, _one_process(SMALL, 64))


@pytest.mark.timeout(120)
def test_srun_pmix_mpi_equals_one_process_at_the_doubled_batch(slurm, tmp_path):
    pytest.importorskip("mpi4py", reason="needs the mpi extra: pip install 'leantrain[mpi]'")
    done = _run(slurm, "srun", "--mpi=pmix", "-n", "2", *LEANTRAIN, "train", *_flags(SMALL, batch_size=32), "--parallel",
                "mpi", "--out", str(tmp_path), "--quiet")
    assert done.returncode == 0, done.stderr
    record = _record(tmp_path)
    assert (record["run"]["parallel"], record["run"]["launcher"], record["run"]["world_size"]) == ("mpi", "slurm", 2)
    _assert_equal_epochs(record, _one_process(SMALL, 64))


@pytest.mark.timeout(240)
def test_a_job_requeued_then_cancelled_and_resumed_ends_equal_to_an_uninterrupted_run(slurm, tmp_path):
    # The script as a user writes it; requeue and scancel both stop every rank with SIGTERM (exit 143, checkpoint
    # kept); the requeued job resumes by itself, the cancelled one with sbatch SCRIPT --resume.
    script, out = tmp_path / "job.sh", tmp_path / "out"
    written = _run(slurm, *LEANTRAIN, "slurm-script", *_flags(LONGER, batch_size=16), "--parallel", "ddp", "--ntasks-per-node", "2",
                   "--cpus-per-task", "1", "--time", "5", "--requeue", "--out", str(out), "--script", str(script),
                   cwd=tmp_path, timeout=60)
    assert written.returncode == 0, written.stderr
    record_path = Path(re.search(r"record: (\S+)\)", written.stdout).group(1))
    checkpoint = record_path.with_suffix(".ckpt")
    assert record_path.parent == out

    job = _sbatch(slurm, script)
    log_path = out / f"{record_path.stem}.slurm-{job}.out"
    _wait(checkpoint.exists, 90, "the first epoch's checkpoint")
    assert _run(slurm, "scontrol", "requeue", job, timeout=30).returncode == 0
    # Only once both ranks of the first run have stopped is a newer checkpoint the requeued job's: the first run
    # may write one more between the requeue and its ranks' SIGTERM (an epoch here is a fraction of a second).
    _wait(lambda: len(_stopped(log_path)) >= 2, 90, "the first run's ranks to stop")
    first = checkpoint.stat().st_mtime_ns
    # The requeued job starts again (Slurm holds it CredExpire + 1 s) and writes a later checkpoint.
    _wait(lambda: checkpoint.exists() and checkpoint.stat().st_mtime_ns != first, 90, "the requeued job's checkpoint")
    assert _run(slurm, "scancel", job, timeout=30).returncode == 0
    assert _wait_ended(slurm, job) == "CANCELLED"
    assert not record_path.exists() and checkpoint.exists()

    log = log_path.read_text()
    assert len(_stopped(log_path)) == 4, log  # both ranks, twice
    assert len(re.findall(r"Exited with exit code 143", log)) >= 2, log  # srun's report of the ranks' status

    resumed = _sbatch(slurm, script, "--resume")
    assert _wait_ended(slurm, resumed) == "COMPLETED", (out / f"{record_path.stem}.slurm-{resumed}.out").read_text()
    assert record_path.exists() and not checkpoint.exists()
    import json

    record = json.loads(record_path.read_text())
    assert (record["run"]["launcher"], record["run"]["world_size"]) == ("slurm", 2)
    _assert_equal_epochs(record, _one_process(LONGER, 32))


EXPERIMENT = """
[experiment]
name = "tiny"
baseline = "baseline"

[defaults]
model = "mlp:hidden=16"
epochs = 2
batch_size = 64

[[cases]]
data = "healthcare-sim:n=800"

[[cases]]
data = "imagenet-sim:n=800"

[recipes.baseline]

[recipes.lean]
lr = 3e-3
schedule = "warmup-cosine"
"""


@pytest.mark.timeout(240)
def test_an_experiment_as_one_slurm_job_per_case_equals_a_local_run_and_resumes_what_is_missing(slurm, tmp_path):
    pytest.importorskip("submitit", reason="needs the slurm extra: pip install 'leantrain[slurm]'")
    from leantrain.experiments.runner import load_experiment, run_experiment

    spec = tmp_path / "tiny.toml"
    spec.write_text(EXPERIMENT)
    out = tmp_path / "slurm"
    command = [*LEANTRAIN, "run", str(spec), "--executor", "slurm", "--partition", slurm.partition, "--time", "5",
               "--cpus-per-task", "1", "--out", str(out)]
    done = _run(slurm, *command)
    assert done.returncode == 0, done.stderr
    assert len(re.findall(r"Slurm job \d+ \(2 runs; log: ", done.stderr)) == 2, done.stderr  # one job per case
    run_experiment(load_experiment(spec), tmp_path / "local", quiet=True)
    local = sorted(p.name for p in (tmp_path / "local").glob("*.json"))
    assert sorted(p.name for p in out.glob("*.json")) == local and len(local) == 4
    assert (out / "summary.md").exists()
    import json

    for name in local:
        mine, theirs = json.loads((out / name).read_text()), json.loads((tmp_path / "local" / name).read_text())
        assert (mine["run"]["case"], mine["run"]["recipe"]) == (theirs["run"]["case"], theirs["run"]["recipe"])
        assert mine["run"]["launcher"] == "none"  # each run trained as a local one inside its job
        _assert_equal_epochs(mine, theirs)

    kept = out / "healthcare-sim-mlp-baseline-s0.json"
    before = kept.stat().st_mtime_ns
    (out / "imagenet-sim-mlp-lean-s0.json").unlink()
    (out / "summary.md").unlink()
    again = _run(slurm, *command, "--resume")
    assert again.returncode == 0, again.stderr
    assert "1 of 2 cases are finished; submitting 1" in again.stderr
    assert re.findall(r"case (\S+): Slurm job \d+ \(2 runs", again.stderr) == ["imagenet-sim-mlp"]
    assert kept.stat().st_mtime_ns == before and (out / "imagenet-sim-mlp-lean-s0.json").exists()
    assert (out / "summary.md").exists()


@pytest.mark.timeout(90)
def test_a_failed_case_job_is_one_line_with_its_log(slurm, tmp_path):
    pytest.importorskip("submitit", reason="needs the slurm extra: pip install 'leantrain[slurm]'")
    spec = tmp_path / "diverges.toml"
    spec.write_text('[experiment]\nname = "diverges"\n[defaults]\nmodel = "mlp:hidden=16"\nepochs = 2\n'
                    '[[cases]]\ndata = "healthcare-sim:n=800"\noptimizer = "sgd"\nlr = 1e30\n')  # diverges at once
    done = _run(slurm, *LEANTRAIN, "run", str(spec), "--executor", "slurm", "--time", "5", "--out", str(tmp_path / "o"))
    assert done.returncode == 1
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("leantrain: error: case ")]
    match = re.fullmatch(r"leantrain: error: case healthcare-sim-mlp: Slurm job (\d+) failed: (.+); log: (\S+)", line)
    assert match, line
    assert "Traceback" not in match.group(2) and "non-finite" in match.group(2)
    assert Path(match.group(3)).is_file() and match.group(2) in Path(match.group(3)).read_text()
    assert "1 of 1 Slurm jobs failed" in done.stderr.splitlines()[-1]
