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
from leantrain.parallel.mpirun import mpirun_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).parent / "scripts" / "train_traced.py"


def _mpirun(*args, timeout=90):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_", "OMPI_COMM"))}
    env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OMPI_ALLOW_RUN_AS_ROOT": "1",
                "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})
    return subprocess.run([mpirun_path(), "-n", "2", "--oversubscribe", sys.executable, *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _traced(tmp_path, parallel, *options, name=None):
    out = tmp_path / f"{name or parallel}.pt"
    result = _mpirun(str(SCRIPT), str(out), parallel, "32", *options)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out, weights_only=False)


@pytest.mark.timeout(120)
def test_mpi_allreduce_on_two_ranks_equals_one_process_with_the_doubled_batch(tmp_path):
    rank0 = _traced(tmp_path, "mpi")
    assert (rank0["record"]["run"]["parallel"], rank0["record"]["run"]["launcher"]) == ("mpi", "mpi")
    _compare(run_single({**BASE, "batch_size": 64}), [rank0], rtol=1e-5, atol=1e-7)


@pytest.mark.timeout(120)
def test_a_sharded_optimizer_on_two_ranks_equals_one_process_with_the_doubled_batch(tmp_path):
    rank0 = _traced(tmp_path, "mpi", "shard_optimizer=true")
    sharded = rank0["record"]["run"]["optimizer_sharded"]
    assert sharded["ranks"] == 2 and sum(sharded["elements_per_rank"]) == rank0["record"]["run"]["params"]
    assert abs(sharded["elements_per_rank"][0] - sharded["elements_per_rank"][1]) <= 1
    _compare(run_single({**BASE, "batch_size": 64}), [rank0], rtol=1e-5, atol=1e-7)


@pytest.mark.timeout(120)
def test_a_sharded_run_interrupted_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    single = run_single({**BASE, "batch_size": 64})  # 8 steps an epoch, 16 in all
    sharded = ("shard_optimizer=true", 'checkpoint_every="3"', f"out_dir={tmp_path / 'out'}")
    cut = _traced(tmp_path, "mpi", *sharded, "stop=11", name="cut")  # after the step-9 checkpoint
    assert cut["record"] is None and len(cut["steps"]) == 11
    resumed = _traced(tmp_path, "mpi", *sharded, "resume", name="resumed")
    assert len(resumed["steps"]) == len(single["steps"]) - 9  # from the checkpoint on
    torch.testing.assert_close(resumed["steps"][-1], single["steps"][-1], rtol=1e-5, atol=1e-7)
    for got, want in zip(resumed["record"]["epochs"], single["record"]["epochs"]):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)


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


@pytest.mark.parametrize("settings, message", [
    ({"parallel": "ddp"}, "shard_optimizer is for parallel mpi"),
    ({"parallel": "mpi", "precision": "fp16"}, "precision fp16 with shard_optimizer"),
    ({"parallel": "mpi", "complexity": "match"}, "complexity matching rebuilds"),
])
def test_a_sharded_optimizer_refuses_what_it_cannot_shard_in_one_line(settings, message):
    from leantrain.config import RunConfig
    from leantrain.errors import UsageError

    with pytest.raises(UsageError, match=message):
        RunConfig.from_dict({**BASE, "procs": 2, "shard_optimizer": True, **settings}).validated()


def test_a_sharded_optimizer_refuses_the_users_own_optimizer():
    from leantrain.config import RunConfig
    from leantrain.errors import UsageError
    from leantrain.train.run import execute

    with pytest.raises(UsageError, match="pass the optimizer by name"):
        execute(RunConfig.from_dict({**BASE, "shard_optimizer": True, "parallel": "mpi"}),
                optimizer=lambda model: torch.optim.SGD(model.parameters(), lr=0.1), quiet=True)
