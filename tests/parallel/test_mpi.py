"""MPI: seed 003's flat-buffer Allreduce equals one process on the doubled batch; mpirun as a launcher for DDP
equals torchrun; a rank that dies ends the job with a non-zero status, not a hang."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.parallel.helpers import run_single
from tests.parallel.test_ddp import BASE, _compare

pytest.importorskip("mpi4py", reason="needs the mpi extra: pip install 'leantrain[mpi]'")
from leantrain.parallel.mpi import mpirun_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).parent / "scripts" / "train_traced.py"


def _mpirun(*args, timeout=90):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_", "OMPI_COMM"))}
    env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OMPI_ALLOW_RUN_AS_ROOT": "1",
                "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})
    return subprocess.run([mpirun_path(), "-n", "2", "--oversubscribe", sys.executable, *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _traced(tmp_path, parallel):
    out = tmp_path / f"{parallel}.pt"
    result = _mpirun(str(SCRIPT), str(out), parallel, "32")
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out, weights_only=False)


@pytest.mark.timeout(120)
def test_mpi_allreduce_on_two_ranks_equals_one_process_with_the_doubled_batch(tmp_path):
    rank0 = _traced(tmp_path, "mpi")
    assert (rank0["record"]["run"]["parallel"], rank0["record"]["run"]["launcher"]) == ("mpi", "mpi")
    _compare(run_single({**BASE, "batch_size": 64}), [rank0], rtol=1e-5, atol=1e-7)


@pytest.mark.timeout(120)
def test_mpirun_as_the_launcher_of_ddp_equals_one_process_with_the_doubled_batch(tmp_path):
    rank0 = _traced(tmp_path, "ddp")
    assert (rank0["record"]["run"]["launcher"], rank0["record"]["run"]["backend"]) == ("mpi", "gloo")
    _compare(run_single({**BASE, "batch_size": 64}), [rank0], rtol=1e-5, atol=1e-7)


@pytest.mark.timeout(120)
def test_an_mpi_rank_that_dies_ends_the_job_non_zero(tmp_path):
    start = time.monotonic()
    result = _mpirun(str(SCRIPT), str(tmp_path / "x.pt"), "mpi", "32", "die")
    assert result.returncode != 0
    assert time.monotonic() - start < 60
    assert not (tmp_path / "x.pt").exists()


def test_parallel_mpi_outside_mpirun_says_how_to_launch(capsys, tmp_path):
    from leantrain.cli import main

    code = main(["train", "--model", "mlp:hidden=8", "--data", "healthcare-sim:n=256", "--epochs", "1", "--quiet",
                 "--parallel", "mpi", "--out", str(tmp_path / "o")])
    assert code == 2 and "--procs N" in capsys.readouterr().err


def test_without_mpi4py_parallel_mpi_says_how_to_install_it(monkeypatch):
    import sys as system

    from leantrain.errors import UsageError
    from leantrain.parallel.mpi import mpi_module

    monkeypatch.setitem(system.modules, "mpi4py", None)  # as if not installed
    with pytest.raises(UsageError, match=r"pip install 'leantrain\[mpi\]'"):
        mpi_module()
