"""The memory estimate of an FSDP rank and of a pipeline stage is within 25% of the peak the loop measures on that
rank (issue 24), over repeated runs: the estimate is of the prepared model (an FSDP rank's shard with its gathered
weights, a pipeline stage fed what the earlier stages send, times the micro-batches its schedule holds at once) at
the batch the rank trains on. The measured peak is tensor bytes (state + what the step saves for backward, counted
by storage), not RSS: it does not move with the machine's load. Workers are forked and rendezvous through a file.

The data set's bytes are left out of the comparison: the estimate counts them, the loop's figure does not."""
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

# Activations are a large part of each rank's peak (about a third under FSDP, half a stage's), so a miscount shows.
CONFIG = {"model": "mlp:hidden=256,depth=4", "data": "healthcare-sim:n=1280", "epochs": 1, "lr": 1e-3,
          "device": "cpu", "seed": 5, "batch_size": 128, "memory_check": True}
REPEATS = 2


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


def _run(folder: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    folder.mkdir()
    mp.start_processes(_worker, args=(2, folder, config), nprocs=2, start_method="fork", join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _estimated_and_measured(results: list[dict[str, Any]]) -> list[tuple[int, int, int, int]]:
    """Per rank: (estimated peak without the data, measured peak, estimated activations, measured activations)."""
    pairs = []
    for rank, result in enumerate(results):
        (estimate,) = result["estimates"]
        epoch = result["epoch"]
        pairs.append((estimate["parameters"] + estimate["gradients"] + estimate["optimizer"] + estimate["activations"],
                      epoch["peak_mem_bytes_per_rank"][rank], estimate["activations"], epoch["activation_bytes"]))
    return pairs


def _assert_within_25_percent_every_time(tmp_path: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    seen = []
    for repeat in range(REPEATS):
        results = _run(tmp_path / f"run{repeat}", config)
        for estimated, measured, estimated_act, measured_act in _estimated_and_measured(results):
            assert 0.75 * measured <= estimated <= 1.25 * measured, (repeat, estimated, measured)
            assert 0.75 * measured_act <= estimated_act <= 1.25 * measured_act, (repeat, estimated_act, measured_act)
        seen.append(_estimated_and_measured(results))
    assert all(figures == seen[0] for figures in seen)  # the same bytes every time: counted, not sampled
    return results


@pytest.mark.timeout(300)
def test_an_fsdp_ranks_estimate_is_within_25_percent_of_its_measured_peak(tmp_path):
    results = _assert_within_25_percent_every_time(tmp_path, {**CONFIG, "parallel": "fsdp"})
    for result in results:
        (estimate,) = result["estimates"]
        assert estimate["parameters"] <= 0.55 * result["params"] * 4  # its shard, not the whole model
        # The gathered weights of a block (256 x 256 floats) are alive at the peak, on top of the activations of the
        # rank's whole batch (--batch-size is per worker under FSDP).
        assert result["epoch"]["activation_bytes"] > 256 * 256 * 4 + CONFIG["batch_size"] * 256 * 4 * 4


@pytest.mark.timeout(300)
@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_a_pipeline_stages_estimate_is_within_25_percent_of_its_measured_peak(tmp_path, schedule):
    results = _assert_within_25_percent_every_time(tmp_path, {**CONFIG, "parallel": "pipeline", "schedule_pp": schedule})
    for result in results:
        (estimate,) = result["estimates"]
        assert estimate["parameters"] <= 0.65 * result["params"] * 4  # its stage, not the whole model
