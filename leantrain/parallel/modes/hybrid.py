"""``--parallel dpAxppB`` (e.g. dp2xpp2): A data-parallel replicas of a B-stage pipeline, A x B workers."""
from __future__ import annotations

import re

from leantrain.errors import UsageError
from leantrain.parallel.modes.pipeline import Pipeline
from leantrain.parallel.strategy import RunConfig, register_mode

SHAPE = re.compile(r"dp([1-9][0-9]*)xpp([2-9]|[1-9][0-9]+)")  # at least 2 stages


def hybrid_shape(parallel: str) -> tuple[int, int]:
    """(data-parallel replicas, pipeline stages) of a ``dpAxppB`` value."""
    match = SHAPE.fullmatch(parallel)
    assert match, parallel
    return int(match.group(1)), int(match.group(2))


@register_mode
class DataTimesPipeline(Pipeline):
    name = "hybrid"
    summary = "A data-parallel replicas x B pipeline stages, A x B workers"
    spelled = "dpAxppB (e.g. dp2xpp2)"
    order = 50

    @classmethod
    def accepts(cls, parallel: str) -> bool:
        return SHAPE.fullmatch(parallel) is not None

    def shape(self, config: RunConfig) -> tuple[int, int | None]:
        return hybrid_shape(config.parallel)

    def check(self, config: RunConfig, where: str) -> None:
        super().check(config, where)
        replicas, stages = hybrid_shape(config.parallel)
        if isinstance(config.procs, int) and config.procs != replicas * stages:
            raise UsageError(f"{where}: parallel {config.parallel} is {replicas} x {stages} = {replicas * stages} "
                             f"processes, but procs is {config.procs}")
