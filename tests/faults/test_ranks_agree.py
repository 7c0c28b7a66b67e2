"""On several ranks, a NaN on one rank stops every rank at the same step (no rank left waiting in a collective).

The ranks are fresh processes started by torchrun (not forked from the test process, whose threads a fork
would copy in a half-held state)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from leantrain.train import checkpoint
from leantrain.train.run_identity import resume_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).parent / "scripts" / "nan_on_one_rank.py"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("step", [7, 45])  # 32 steps an epoch; the device check reads every 32 steps
def test_a_nan_on_one_rank_stops_all_ranks_at_the_same_step(tmp_path, step):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(SCRIPT), str(tmp_path), str(step)],
                            env={**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, cwd=ROOT,
                            capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stderr[-3000:]
    messages = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert messages[0].split(";")[0] == messages[1].split(";")[0]  # the same step and epoch on both ranks
    # As on one process (README, Reliability), a NaN gradient under a finite loss is caught by the next step's loss:
    # several CPU ranks read their losses and agree on the first bad step instead of a gradient pass every step.
    caught = step + 1
    assert f"at step {caught} (epoch {1 if caught <= 32 else 2})" in messages[0]
    saved = checkpoint.load(resume_checkpoint(tmp_path / "out", None))  # the last good one: before the bad step
    assert saved["step"] < step and all(torch.isfinite(t).all() for t in saved["model"].values())
