"""On several ranks, a NaN on one rank stops every rank at the same step (no rank left waiting in a collective)."""
import os

import pytest
import torch
import torch.multiprocessing as mp

from leantrain.config import RunConfig
from leantrain.errors import TrainingDiverged
from leantrain.techniques import Technique
from leantrain.train.run import execute
from tests.parallel.helpers import world_env

CONFIG = {"model": "mlp:hidden=16", "data": "healthcare-sim:n=1280", "epochs": 2, "batch_size": 16, "lr": 3e-3,
          "device": "cpu", "seed": 3, "parallel": "ddp"}


class PoisonOneRank(Technique):
    name = "poison-one-rank"

    def __init__(self, rank: int, step: int):
        self.rank, self.step = rank, step

    def after_micro_backward(self, state, micro_index):
        if state.dist.rank == self.rank and state.step + 1 == self.step:
            next(p for p in state.model.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")


def _worker(rank, folder, out_dir, step):
    os.environ.update(world_env(rank, 2, folder / "rendezvous"))
    torch.set_num_threads(1)
    try:
        execute(RunConfig.from_dict({**CONFIG, "checkpoint_every": "4"}), techniques=[PoisonOneRank(1, step)],
                out_dir=out_dir, quiet=True)
        message = "finished"
    except TrainingDiverged as e:
        message = str(e)
    (folder / f"rank{rank}.txt").write_text(message)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("step", [7, 45])  # 32 steps an epoch; the device check reads every 32 steps
def test_a_nan_on_one_rank_stops_all_ranks_at_the_same_step(tmp_path, step):
    out = tmp_path / "out"
    mp.start_processes(_worker, args=(tmp_path, out, step), nprocs=2, start_method="fork", join=True)
    messages = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert messages[0].split(";")[0] == messages[1].split(";")[0]  # the same step and epoch on both ranks
    assert f"at step {step} (epoch {1 if step <= 32 else 2})" in messages[0]
    from leantrain.train import checkpoint

    saved = checkpoint.load(checkpoint.find(out))  # the last good one: before the bad step
    assert saved["step"] < step and all(torch.isfinite(t).all() for t in saved["model"].values())
