"""Bad parallel settings: one line naming the value and what to do, exit 2, nothing written."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leantrain.cli import main
from leantrain.parallel.dist import free_port

ROOT = Path(__file__).resolve().parents[2]
TINY = ["train", "--model", "mlp:hidden=8", "--data", "healthcare-sim:n=256", "--epochs", "1", "--quiet"]


def _fails(capsys, tmp_path, *flags):
    out = tmp_path / "out"
    assert main([*TINY, "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("leantrain: error:") and "\n" not in err
    assert not out.exists()
    return err


def test_ddp_without_a_launcher_says_how_to_launch(capsys, tmp_path):
    assert "--procs N" in _fails(capsys, tmp_path, "--parallel", "ddp")


def test_procs_must_be_positive(capsys, tmp_path):
    assert "procs must be a positive integer, got 0" in _fails(capsys, tmp_path, "--parallel", "ddp", "--procs", "0")


def test_procs_without_a_parallel_mode_is_refused(capsys, tmp_path):
    assert "add --parallel ddp" in _fails(capsys, tmp_path, "--procs", "2")


def test_nccl_on_cpu_is_refused(capsys, tmp_path):
    assert "nccl" in _fails(capsys, tmp_path, "--parallel", "ddp", "--procs", "2", "--backend", "nccl", "--device", "cpu")


def test_an_unknown_parallel_mode_lists_the_known_ones(capsys, tmp_path):
    assert "parallel 'zero3' is not one of: none, ddp, mpi, fsdp, pipeline, dpAxppB (e.g. dp2xpp2), ensemble" in _fails(
        capsys, tmp_path, "--parallel", "zero3")


@pytest.mark.timeout(120)
def test_a_model_that_does_not_take_the_data_under_launched_workers_leaves_no_folder(capsys, tmp_path):
    err = _fails(capsys, tmp_path, "--model", "cnn", "--parallel", "ddp", "--procs", "2")  # no lock file left either
    assert "needs float images" in err


def test_more_procs_than_cores_warns_and_goes_on():
    from leantrain.parallel.launch import check_procs, cores_available

    with pytest.warns(RuntimeWarning, match="more than the"):
        check_procs(cores_available() + 1)


@pytest.mark.timeout(60)
def test_an_unreachable_rendezvous_fails_within_the_timeout_naming_host_and_port(tmp_path):
    port = free_port()  # nobody listens there
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONPATH": str(ROOT)}
    env.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "leantrain", *TINY, "--parallel", "ddp", "--dist-timeout", "3",
                             "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=50)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"127.0.0.1:{port}" in result.stderr and "within 3s" in result.stderr
    assert time.monotonic() - start < 40
    assert not (tmp_path / "out").exists()
    with socket.socket() as s:  # the port was really free: the error was not a collision
        s.bind(("127.0.0.1", port))
