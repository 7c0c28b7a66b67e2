"""A run's ``auto`` settings chosen across its ranks: who measures, who waits, and how each rank's threads are
shared out (resolve.py measures; this decides where). The run's orchestration (``train/run.py``) calls it."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from leantrain.config import RunConfig
from leantrain.data.dataset import Dataset
from leantrain.errors import UsageError
from leantrain.parallel.dist import Dist
from leantrain.parallel.env import World
from leantrain.parallel.launch import cores_available
from leantrain.tuning.resolve import Tuned, auto_knobs, resolve


def tune_on_ranks(config: RunConfig, dist: Dist, model: nn.Module, dataset: Dataset, device: torch.device,
                  saved: dict[str, Any] | None, say: Callable[[str], None], own_model: bool = False) -> Tuned:
    """The config with its auto knobs resolved (see resolve.py).

    Several ranks: a rank's auto threads are its share of the node's cores (its sibling ranks are not
    "other processes" to leave cores for). Ranks never probe at once: they would compete for the cores
    and might choose differently. Data parallel (one model): rank 0 alone measures precision and Adam
    kernel and broadcasts its record; the other ranks take it and never probe. An ensemble
    (``own_model``: a different model per rank): each member measures its own model, one rank at a time.
    """
    if dist.world_size <= 1 or not auto_knobs(config):
        return resolve(config, model, dataset, device, saved=saved, say=say)
    share = {"choice": threads_per_worker(dist.world), "cpus": cores_available(),
             "workers": dist.world.local_world_size, "source": "per-worker share"}
    if own_model:
        tuned: Tuned | None = None
        for turn in range(dist.world_size):
            failed = False
            if dist.rank == turn:
                try:
                    tuned = resolve(config, model, dataset, device, saved=saved, threads=share, say=say)
                except BaseException:
                    failed = True
                    dist.any(True)  # the others stop waiting: this rank's error is the job's
                    raise
            if dist.any(failed):
                raise UsageError(f"rank {turn} failed while choosing its auto settings; see its error")
        assert tuned is not None
        return tuned
    if dist.is_main:
        try:
            tuned = resolve(config, model, dataset, device, saved=saved, threads=share, say=say,
                                   data_ranks=dist.world_size)
        except BaseException:
            dist.broadcast(None)  # the others stop waiting: rank 0's error is the job's
            raise
        dist.broadcast(tuned.record)
        return tuned
    record = dist.broadcast(None)
    if record is None:
        raise UsageError("rank 0 failed while choosing the auto settings; see its error")
    return resolve(config, model, dataset, device, saved=record, saved_from="rank 0", threads=share)


def threads_per_worker(world: World) -> int:
    return max(1, cores_available() // max(1, world.local_world_size))
