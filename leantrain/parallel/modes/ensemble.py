"""``--parallel ensemble``: a different model per worker, each trained alone, their predictions combined at every
epoch's end (see parallel/ensemble.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from leantrain.errors import UsageError
from leantrain.parallel.strategy import ParallelStrategy, RunConfig, register_mode

if TYPE_CHECKING:
    from leantrain.data.dataset import Dataset
    from leantrain.parallel.dist import Dist
    from leantrain.techniques.base import Technique


@register_mode
class Ensemble(ParallelStrategy):
    name = "ensemble"
    summary = "one model per worker, each trained alone, their class probabilities combined"
    trains_alone = True
    takes_members = True
    order = 60

    def check(self, config: RunConfig, where: str) -> None:
        from leantrain.models.registry import MODELS
        from leantrain.parallel.ensemble import split_members
        from leantrain.registry import check_spec

        super().check(config, where)
        if config.init_from is not None:
            raise UsageError(f"{where}: init_from {config.init_from}: an ensemble trains a different model per worker, "
                             "from its own initialisation; init_from takes any other parallel mode")
        if config.members is None:
            return
        try:
            specs = split_members(config.members)
            for spec in specs:
                check_spec(MODELS, spec, "data")
        except UsageError as e:
            raise UsageError(f"{where}: members: {e}") from None
        if isinstance(config.procs, int) and len(specs) != config.procs:
            raise UsageError(f"{where}: members names {len(specs)} models for procs {config.procs}; give one per worker")

    def check_data(self, config: RunConfig, dataset: Dataset) -> None:
        if dataset.task != "classification":
            raise UsageError(f"--parallel ensemble combines class probabilities; {config.data} is a {dataset.task} task")

    def member_model(self, config: RunConfig, dist: Dist) -> str | None:
        from leantrain.parallel.ensemble import member_spec

        return member_spec(config.model, config.members, dist.rank, dist.world_size)

    def hooks(self, config: RunConfig, dist: Dist, dataset: Dataset, member: str | None) -> list[Technique]:
        from leantrain.parallel.ensemble import EnsembleMember

        assert member is not None
        return [EnsembleMember(dist, member, dataset.x_val.to(dist.device), dataset.y_val.cpu(),
                               config.eval_batch_size, config.seed)]
