"""``--parallel none``: one process (or several, each training alone, when launched: refused)."""
from __future__ import annotations

from leantrain.errors import UsageError
from leantrain.parallel.strategy import ParallelStrategy, RunConfig, register_mode


@register_mode
class OneProcess(ParallelStrategy):
    name = "none"
    summary = "one process"
    order = 0

    def check(self, config: RunConfig, where: str) -> None:
        super().check(config, where)
        if isinstance(config.procs, int) and config.procs > 1:
            raise UsageError(f"{where}: procs {config.procs} with parallel none would train {config.procs} separate "
                             "copies; add --parallel ddp")
