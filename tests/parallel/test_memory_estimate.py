"""The memory estimate of an FSDP rank is of its shard (the preflight runs on the prepared model), within 25% of what
the rank then measures while training. Workers are forked and rendezvous through a file."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from leantrain.config import RunConfig
from leantrain.train import memory
from leantrain.train.run import execute
from tests.parallel.helpers import world_env

CONFIG = {"model": "mlp:hidden=256,depth=4", "data": "healthcare-sim:n=1280", "epochs": 1, "lr": 1e-3,
          "device": "cpu", "seed": 5, "batch_size": 128, "memory_check": True}


def _worker(rank: int, world_size: int, folder: Path, config: dict[str, Any]) -> None:
    os.environ.update(world_env(rank, world_size, folder / "rendezvous"))
    torch.set_num_threads(1)
    estimates: list[memory.MemoryEstimate] = []
    real_estimate = memory.estimate

    def spy(*args: Any, **kwargs: Any) -> memory.MemoryEstimate:
        estimates.append(real_estimate(*args, **kwargs))
        return estimates[-1]

    memory.estimate = spy  # type: ignore[assignment]  # a forked worker: its own copy of the module
    memory.available_bytes = lambda device: 2**40  # type: ignore[assignment]  # checked on any machine
    record = execute(RunConfig.from_dict(config), quiet=True)
    torch.save({"estimates": [vars(e) for e in estimates], "epoch": record["epochs"][0],
                "params": record["run"]["params"]}, folder / f"rank{rank}.pt")


@pytest.mark.timeout(180)
def test_an_fsdp_ranks_estimate_is_of_its_shard_and_within_25_percent_of_its_measured_peak(tmp_path):
    mp.start_processes(_worker, args=(2, tmp_path, {**CONFIG, "parallel": "fsdp"}), nprocs=2, start_method="fork",
                       join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for result in results:
        (estimate,) = result["estimates"]
        whole_model_bytes = result["params"] * 4
        assert estimate["parameters"] <= 0.55 * whole_model_bytes  # its shard, not the whole model
    rank0 = results[0]
    (estimate,) = rank0["estimates"]
    trained = estimate["parameters"] + estimate["gradients"] + estimate["optimizer"] + estimate["activations"]
    peak = rank0["epoch"]["peak_mem_bytes"]
    assert 0.75 * peak <= trained <= 1.25 * peak, (estimate, rank0["epoch"])
