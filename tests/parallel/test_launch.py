"""The launchers themselves: torchrun (one agent, two agents), leantrain's --procs, restarts and failures."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from leantrain.parallel.dist import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).parent / "scripts" / "fit_ddp.py"
TRAIN = ["-m", "leantrain", "train", "--model", "mlp:hidden=32", "--data", "healthcare-sim:n=1280", "--epochs", "2",
         "--batch-size", "32", "--device", "cpu", "--threads", "1", "--parallel", "ddp", "--quiet"]


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _torchrun(*args, **kwargs):
    return [sys.executable, "-m", "torch.distributed.run", *args]


def _epochs(folder):
    (record,) = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    return [(e["train_loss"], e["val_loss"], e["val_acc"]) for e in record["epochs"]], record["run"]


@pytest.mark.timeout(90)
def test_two_torchrun_agents_equal_one_agent_with_two_workers(tmp_path):
    one = subprocess.run(_torchrun("--standalone", "--nproc-per-node", "2", *TRAIN, "--out", str(tmp_path / "one")),
                         env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=80)
    assert one.returncode == 0, one.stderr[-2000:]
    endpoint = f"127.0.0.1:{free_port()}"
    agents = [
        subprocess.Popen(_torchrun("--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1",
                                   "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "two-agents",
                                   *TRAIN, "--out", str(tmp_path / "two")),
                         env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for node in (0, 1)
    ]
    for agent in agents:
        _, err = agent.communicate(timeout=80)
        assert agent.returncode == 0, err[-2000:]
    (one_epochs, one_run), (two_epochs, two_run) = _epochs(tmp_path / "one"), _epochs(tmp_path / "two")
    assert (two_run["nodes"], two_run["procs_per_node"], two_run["world_size"]) == (2, 1, 2)
    assert (one_run["nodes"], one_run["procs_per_node"]) == (1, 2)
    for got, want in zip(two_epochs, one_epochs):
        assert got == pytest.approx(want, rel=1e-6)


@pytest.mark.timeout(90)
def test_procs_launches_its_own_workers_and_prints_once(tmp_path):
    result = subprocess.run([sys.executable, *TRAIN, "--procs", "2", "--out", str(tmp_path)], env=_env(), cwd=ROOT,
                            capture_output=True, text=True, timeout=80)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("final val_acc") == 1
    epochs, run = _epochs(tmp_path)
    assert (run["world_size"], run["launcher"], run["config"]["procs"]) == (2, "torchrun", 2)


@pytest.mark.timeout(120)
def test_a_killed_rank_is_restarted_and_training_ends_as_if_uninterrupted(tmp_path):
    def fit(folder, fault):
        return subprocess.run(_torchrun("--standalone", "--nproc-per-node", "2", "--max-restarts", "1", "--monitor-interval", "0.2",
                                        str(SCRIPT), str(folder), fault, "1"),
                              env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=100)

    clean, killed = fit(tmp_path / "clean", "none"), fit(tmp_path / "killed", "kill")
    assert clean.returncode == 0, clean.stderr[-2000:]
    assert killed.returncode == 0, killed.stderr[-2000:]
    want, got = torch.load(tmp_path / "clean" / "weights.pt"), torch.load(tmp_path / "killed" / "weights.pt")
    for key in want:
        assert torch.equal(got[key], want[key]), key


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fault", ["raise", "hang"])
def test_one_failing_rank_makes_every_rank_exit_non_zero_in_time(tmp_path, fault):
    start = time.monotonic()
    result = subprocess.run(_torchrun("--standalone", "--nproc-per-node", "2", str(SCRIPT), str(tmp_path), fault, "1"),
                            env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=80)
    assert result.returncode != 0
    assert time.monotonic() - start < 60  # dist_timeout is 5 s: a hang turns into an error, not a stuck job
    assert not list(tmp_path.glob("*.json"))  # no result for an unfinished run; the epoch-1 checkpoint stays
    assert len(list(tmp_path.glob("*.ckpt"))) == 1
