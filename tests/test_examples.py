"""The examples run as they are shipped."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.timeout(240)
def test_quickstart_example_runs_and_writes_its_plot_and_step_log(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=220, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "| baseline |" in done.stdout and "| lean |" in done.stdout and "speedup to target" in done.stdout
    assert (tmp_path / "epochs.png").stat().st_size > 0
    assert len(list((tmp_path / "lean").glob("*.steps.csv"))) == 1


@pytest.mark.timeout(240)
def test_peers_benchmark_runs_its_leantrain_arms_without_the_peer_frameworks(tmp_path):
    """The script itself works (its timings are the benchmark's business, not a test's)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--data", "healthcare-sim:n=600", "--epochs", "1",
         "--repeats", "1", "--threads", "1", "--arms", "plain,leantrain-baseline", "--json", str(tmp_path / "p.json")],
        capture_output=True, text=True, env=env, timeout=220, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| plain |", "| leantrain-baseline |"))]
    assert len(rows) == 2 and "capability" in done.stdout and "load average" in done.stdout
    assert (tmp_path / "p.json").stat().st_size > 0
