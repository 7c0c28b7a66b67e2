"""``--parallel ddp``: data parallelism with PyTorch's DistributedDataParallel (see parallel/ddp.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from leantrain.parallel.strategy import ParallelStrategy, RunConfig, register_mode

if TYPE_CHECKING:
    from leantrain.data.dataset import Dataset
    from leantrain.parallel.dist import Dist
    from leantrain.techniques.base import Technique


@register_mode
class DistributedDataParallel(ParallelStrategy):
    name = "ddp"
    summary = "data parallel: every rank the whole model, gradients all-reduced in DDP's buckets"
    chooses_procs = True
    order = 10

    def hooks(self, config: RunConfig, dist: Dist, dataset: Dataset, member: str | None) -> list[Technique]:
        from leantrain.parallel.ddp import DataParallel

        return [DataParallel(bucket_cap_mb=config.ddp_bucket_mb, static_graph=config.ddp_static_graph,
                             gradient_as_bucket_view=config.ddp_grad_as_bucket_view, compress=config.ddp_compress)]
