"""The memory estimate of an FSDP rank is of its shard (the preflight runs on the prepared model) and of its share of
the global batch. Workers are forked and rendezvous through a file.

Not asserted: the estimate within 25% of the rank's measured peak. It held on a quiet machine and failed under
load (5.4 MB estimated against 3.2 MB measured): how many gathered layers' weights are alive when a dry step's
peak is read varies from step to step, and the two-size line multiplies that by the batch."""
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

    batch_sizes: list[int] = []
    real_activation_bytes = memory.activation_bytes

    def activation_bytes(model: Any, dataset: Any, batch_size: int, precision: str) -> int:
        batch_sizes.append(batch_size)
        return real_activation_bytes(model, dataset, batch_size, precision)

    memory.estimate = spy  # type: ignore[assignment]  # a forked worker: its own copy of the module
    memory.activation_bytes = activation_bytes  # type: ignore[assignment]
    memory.available_bytes = lambda device: 2**40  # type: ignore[assignment]  # checked on any machine
    record = execute(RunConfig.from_dict(config), quiet=True)
    torch.save({"estimates": [vars(e) for e in estimates], "epoch": record["epochs"][0], "batch_sizes": batch_sizes,
                "params": record["run"]["params"]}, folder / f"rank{rank}.pt")


@pytest.mark.timeout(180)
def test_an_fsdp_ranks_estimate_is_of_its_shard_and_of_its_share_of_the_batch(tmp_path):
    mp.start_processes(_worker, args=(2, tmp_path, {**CONFIG, "parallel": "fsdp"}), nprocs=2, start_method="fork",
                       join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for result in results:
        (estimate,) = result["estimates"]
        whole_model_bytes = result["params"] * 4
        assert estimate["parameters"] <= 0.55 * whole_model_bytes  # its shard, not the whole model
    # Each rank's activations are of its half of the batch: its dry steps run at 64, not 128.
    sizes = _dry_sizes(results)
    assert sizes and all(size <= CONFIG["batch_size"] // 2 for size in sizes)


def _dry_sizes(results: list[dict[str, Any]]) -> list[int]:
    return [size for result in results for size in result["batch_sizes"]]
