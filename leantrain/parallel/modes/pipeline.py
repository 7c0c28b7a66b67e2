"""``--parallel pipeline``: the model's blocks cut into one stage per worker, micro-batches flowing through them
(torch.distributed.pipelining; see parallel/pipeline.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from leantrain.errors import UsageError
from leantrain.parallel.modes.fsdp import refuse_fp16
from leantrain.parallel.strategy import ParallelStrategy, RunConfig, register_mode

if TYPE_CHECKING:
    from leantrain.parallel.dist import Dist
    from leantrain.parallel.plan import ParallelPlan


@register_mode
class Pipeline(ParallelStrategy):
    name = "pipeline"
    summary = "model parallel: the blocks split into one stage per worker, micro-batches pipelined"
    order = 40

    def shape(self, config: RunConfig) -> tuple[int, int | None]:
        """(data-parallel replicas, pipeline stages); stages None while procs is not known."""
        return 1, config.procs if isinstance(config.procs, int) else None

    def check(self, config: RunConfig, where: str) -> None:
        super().check(config, where)
        refuse_fp16(config, where)
        if config.padding_trimmed_by:
            raise UsageError(f"{where}: {config.padding_trimmed_by} varies batch shapes, which a pipeline's stages cannot take; "
                             f"drop it under parallel {config.parallel}")
        if config.batch_size == "auto":
            raise UsageError(f"{where}: batch_size auto is not for parallel {config.parallel} (the batch must be a "
                             "multiple of microbatches); give a number")
        if isinstance(config.batch_size, int) and config.batch_size % config.microbatches:
            raise UsageError(f"{where}: batch_size {config.batch_size} is not a multiple of microbatches "
                             f"{config.microbatches}; each micro-batch must be the same size")
        stages = self.shape(config)[1]
        if stages is not None and stages < 2:
            raise UsageError(f"{where}: a pipeline needs at least 2 stages: procs {config.procs}")
        if config.schedule_pp == "1f1b" and stages is not None and config.microbatches < stages:
            raise UsageError(f"{where}: schedule 1f1b needs at least one micro-batch per stage: microbatches "
                             f"{config.microbatches} < {stages} stages; raise microbatches or use gpipe")

    def plan(self, config: RunConfig, dist: Dist) -> ParallelPlan:
        from leantrain.parallel.pipeline import PipelinePlan  # the pipelining API needs a newer torch

        replicas, stages = self.shape(config)
        return PipelinePlan(dist, replicas, stages or dist.world_size, config.microbatches, config.schedule_pp)
