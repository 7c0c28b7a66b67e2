"""``--parallel fsdp``: parameters, gradients and optimizer state sharded per block with FSDP2 (parallel/fsdp.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from leantrain.errors import UsageError
from leantrain.parallel.strategy import ParallelStrategy, RunConfig, register_mode

if TYPE_CHECKING:
    from leantrain.parallel.dist import Dist
    from leantrain.parallel.plan import ParallelPlan


def refuse_fp16(config: RunConfig, where: str) -> None:
    """One loss scaler per shard or stage would skip steps the others take."""
    if config.technique_options.get("precision") == "fp16":
        raise UsageError(f"{where}: precision fp16 with parallel {config.parallel}: the loss scaler would decide "
                         "on each shard or stage alone; use bf16")


@register_mode
class FullyShardedDataParallel(ParallelStrategy):
    name = "fsdp"
    summary = "sharded data parallel: parameters, gradients and optimizer state 1/N per rank (FSDP2)"
    order = 30

    def check(self, config: RunConfig, where: str) -> None:
        super().check(config, where)
        refuse_fp16(config, where)

    def plan(self, config: RunConfig, dist: Dist) -> ParallelPlan:
        from leantrain.parallel.fsdp import FsdpPlan  # FSDP2 needs a newer torch than one-process runs do

        return FsdpPlan(dist)
