"""What needs no cluster: how srun's variables are read, the refusals of --parallel mpi under srun, the job script
``leantrain slurm-script`` writes, and the flags of ``leantrain run --executor slurm``."""
from __future__ import annotations

import sys

import pytest
import torch

from leantrain.cli import main
from leantrain.errors import UsageError
from leantrain.parallel.env import NOT_A_LAUNCH, World, detect

SRUN = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1", "SLURM_NNODES": "1", "SLURM_NODELIST": "n1",
        "SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0"}


def test_the_mpi_interface_srun_set_up_is_read():
    assert detect({**SRUN, "PMIX_RANK": "1"}).pmi == "pmix"
    assert detect(SRUN).pmi is None
    pmi2 = detect({**SRUN, "PMI_RANK": "1", "PMI_SIZE": "2", "PMI_FD": "5"})
    assert (pmi2.pmi, pmi2.rank, pmi2.world_size) == ("pmi2", 1, 2)


def test_a_step_that_says_it_is_one_process_is_no_launch():
    assert detect({**SRUN, NOT_A_LAUNCH: "7.0"}).launcher == "none"
    assert detect({**SRUN, NOT_A_LAUNCH: "7.3"}).launcher == "slurm"  # a step started inside it is a launch again


def test_parallel_mpi_under_a_plain_srun_says_to_launch_with_pmix():
    from leantrain.parallel.mpi import mpi_group

    with pytest.raises(UsageError, match=r"under srun needs an MPI interface.*srun --mpi=pmix"):
        with mpi_group(World("slurm", 0, 2, 0, 2), torch.device("cpu")):
            pass
    with pytest.raises(UsageError, match=r"runs under mpirun or srun --mpi=pmix"):
        with mpi_group(World("torchrun", 0, 2, 0, 2), torch.device("cpu")):
            pass


def test_pmi2_with_an_mpi_that_speaks_pmix_only_says_what_to_use():
    from leantrain.parallel.mpi import _world_mismatch

    class OpenMpi5:
        @staticmethod
        def Get_library_version() -> str:
            return "Open MPI v5.0.11, package: Open MPI ..., repo rev: v5.0.11\n"

    line = _world_mismatch(World("mpi", 0, 2, 0, 2, pmi="pmi2"), 1, OpenMpi5)
    assert line.startswith("PMI-2 (srun --mpi=pmi2) started 2 ranks but Open MPI v5.0.11 speaks PMIx only")
    assert "srun --mpi=pmix" in line and "\n" not in line


def _script(tmp_path, capsys, *flags: str) -> str:
    code = main(["slurm-script", "--model", "mlp:hidden=8", "--data", "healthcare-sim:n=256", "--epochs", "1",
                 "--out", str(tmp_path / "out"), *flags])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_the_job_script_starts_the_ranks_with_srun_and_resumes(tmp_path, capsys):
    text = _script(tmp_path, capsys, "--parallel", "ddp", "--nodes", "2", "--ntasks-per-node", "4", "--cpus-per-task",
                   "8", "--time", "1:00:00", "--partition", "gpu", "--account", "lab", "--requeue", "--sbatch=--mem=8G")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --time=1:00:00", "#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --requeue",
                 "#SBATCH --mem=8G", "#SBATCH --open-mode=append"):
        assert line in text.splitlines()
    assert f"#SBATCH --output={(tmp_path / 'out').resolve()}/" in text and (tmp_path / "out").is_dir()
    assert f"leantrain=({sys.executable} -m leantrain)" in text
    train = [line.strip() for line in text.splitlines() if line.strip().startswith("exec srun")]
    assert train[0].endswith('train --resume "$out" --run-name "$run"')
    assert "--parallel ddp" in train[1] and "--threads 8" in train[1]  # the rank's CPUs are its threads
    assert 'SLURM_RESTART_COUNT' in text


def test_parallel_mpi_is_started_with_srun_pmix(tmp_path, capsys):
    text = _script(tmp_path, capsys, "--parallel", "mpi", "--ntasks-per-node", "2")
    starts = [line.split()[1:3] for line in text.splitlines() if line.strip().startswith("exec ")]
    assert starts == [["srun", "--mpi=pmix"]] * 2


def test_the_script_file_says_how_to_submit_it_and_where_the_record_lands(tmp_path, capsys):
    code = main(["slurm-script", "--model", "mlp:hidden=8", "--data", "healthcare-sim:n=256", "--out",
                 str(tmp_path / "out"), "--script", str(tmp_path / "job.sh")])
    said = capsys.readouterr().out
    assert code == 0 and (tmp_path / "job.sh").stat().st_mode & 0o111
    assert said.startswith(f"wrote {tmp_path / 'job.sh'}: sbatch {tmp_path / 'job.sh'} trains ")
    assert f"record: {(tmp_path / 'out').resolve()}/" in said and "--resume continues it" in said


@pytest.mark.parametrize("flags, message", [
    (["--procs", "2", "--parallel", "ddp"], "srun starts the ranks; give --ntasks-per-node"),
    (["--ntasks-per-node", "2"], "starts 2 ranks, which train apart without a parallel mode"),
    (["--nodes", "0"], "--nodes must be a positive integer, got 0"),
    (["--sbatch", "mem=8G"], "give one sbatch option as it is written"),
])
def test_a_job_that_cannot_run_is_refused_in_one_line(tmp_path, capsys, flags, message):
    code = main(["slurm-script", "--model", "mlp:hidden=8", "--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, minutes", [("90", 90), ("30:00", 30), ("1:30:00", 90), ("0:00:30", 1), ("1-0", 1440),
                                           ("2-01:30", 2 * 1440 + 90)])
def test_slurm_time_limits_in_minutes(text, minutes):
    from leantrain.experiments.executors import parse_time

    assert parse_time(text) == minutes


@pytest.mark.parametrize("flags, message", [
    (["--partition", "gpu"], "--partition set the Slurm jobs of --executor slurm"),
    (["--executor", "slurm", "--time", "soon"], "--time 'soon' is not a Slurm time limit"),
    (["--executor", "slurm", "--cpus-per-task", "0"], "--cpus-per-task must be a positive integer, got 0"),
])
def test_run_refuses_slurm_settings_that_cannot_apply(tmp_path, capsys, flags, message):
    code = main(["run", str(tmp_path / "missing.toml"), *flags])
    assert code == 2 and message in capsys.readouterr().err


def test_the_slurm_executor_without_submitit_says_how_to_install_it(monkeypatch):
    from leantrain.experiments.executors import submitit_module

    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    with pytest.raises(UsageError, match=r"pip install 'leantrain\[slurm\]'"):
        submitit_module()


def test_a_failed_jobs_trace_is_told_in_its_last_line():
    from leantrain.experiments.executors import _reason

    rule = "-" * 22
    trace = "Traceback (most recent call last):\n  File x\nleantrain.experiments.executors.CaseFailed: the loss became NaN"
    assert _reason(RuntimeError(f"Job failed with trace:\n{rule}\n{trace}\n{rule}\nYou can check logs")) == \
        "the loss became NaN"
    assert _reason(RuntimeError(f"x\n{rule}\nTraceback\nsubmitit.core.utils.UncompletedJobError: timed out\n{rule}\n")) \
        == "UncompletedJobError: timed out"
