"""``--parallel mpi``: seed 003's method, gradients averaged with mpi4py's Allreduce, launched by mpirun (see
parallel/mpi.py); with ``shard_optimizer``, ZeRO stage 1 over MPI."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from leantrain.errors import UsageError
from leantrain.parallel.strategy import ParallelStrategy, RunConfig, register_mode

if TYPE_CHECKING:
    import torch

    from leantrain.data.dataset import Dataset
    from leantrain.parallel.dist import Dist
    from leantrain.parallel.env import World
    from leantrain.parallel.plan import ParallelPlan
    from leantrain.techniques.base import Technique


@register_mode
class MpiAllreduce(ParallelStrategy):
    name = "mpi"
    summary = "data parallel: gradients averaged with MPI's Allreduce (mpi4py), under mpirun"
    launcher = "mpirun"
    shards_optimizer = True
    order = 20

    def check(self, config: RunConfig, where: str) -> None:
        super().check(config, where)
        if config.shard_optimizer:
            if config.technique_options.get("precision") == "fp16":
                raise UsageError(f"{where}: precision fp16 with shard_optimizer: the loss scaler would check only this "
                                 "rank's slice of the gradients; use bf16")
            if config.technique_options.get("complexity", "off") != "off":
                raise UsageError(f"{where}: complexity matching rebuilds the model's layers, which a sharded "
                                 "optimizer's flat buffer cannot follow; drop shard_optimizer or complexity")

    @contextlib.contextmanager
    def process_group(self, world: World, config: RunConfig, device: torch.device) -> Iterator[Dist]:
        from leantrain.parallel.mpi import mpi_group

        with mpi_group(world, device, config.dist_timeout) as dist:
            yield dist

    def plan(self, config: RunConfig, dist: Dist) -> ParallelPlan:
        from leantrain.parallel.mpi import ShardedOptimizerPlan

        return ShardedOptimizerPlan(dist) if config.shard_optimizer else super().plan(config, dist)

    def hooks(self, config: RunConfig, dist: Dist, dataset: Dataset, member: str | None) -> list[Technique]:
        from leantrain.parallel.mpi import MpiDataParallel

        return [MpiDataParallel()]
