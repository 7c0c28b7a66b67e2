"""A parallel mode, whole: one registered ``ParallelStrategy`` per mode, in its own file under ``parallel/modes/``.

A mode is more than its gradient averaging. It says which settings it takes (``check``), how its processes are
started (``launcher``: torch elastic's, or mpirun) and meet (``process_group``), how the model is laid out over
them (``plan``: the whole model, FSDP shards, pipeline stages), and its part in the loop (``hooks``: DDP's wrap,
MPI's averaging, an ensemble member's vote). ``Run`` (train/run.py), the worker launcher and ``RunConfig`` ask
the strategy and know no mode by name; the list of modes is this registry. Adding a mode is one file and its test
(CONTRIBUTING.md walks through one). The shape is Lightning Fabric's ``strategies/`` and torchtitan's
``ParallelDims`` with its ``parallelize_fn``.

Mode files are imported to validate a config, so they stay light: what a mode needs of torch.distributed, FSDP
or the pipelining API it imports inside its methods.
"""
from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from leantrain.errors import UsageError

if TYPE_CHECKING:
    import torch

    from leantrain.data.dataset import Dataset
    from leantrain.parallel.dist import Dist
    from leantrain.parallel.env import World
    from leantrain.parallel.plan import ParallelPlan
    from leantrain.techniques.base import Technique

MODES_PACKAGE = "leantrain.parallel.modes"


class RunConfig(Protocol):
    """The settings a parallel mode reads: ``leantrain.config.RunConfig`` is one (config sits above parallel/, so a
    mode names what it needs of it rather than importing it)."""

    @property
    def parallel(self) -> str: ...
    @property
    def procs(self) -> int | str | None: ...
    @property
    def batch_size(self) -> int | str: ...
    @property
    def eval_batch_size(self) -> int: ...
    @property
    def microbatches(self) -> int: ...
    @property
    def schedule_pp(self) -> str: ...
    @property
    def padding_trimmed_by(self) -> str | None: ...
    @property
    def members(self) -> str | None: ...
    @property
    def init_from(self) -> str | None: ...
    @property
    def shard_optimizer(self) -> bool: ...
    @property
    def technique_options(self) -> dict[str, Any]: ...
    @property
    def backend(self) -> str: ...
    @property
    def dist_timeout(self) -> float: ...
    @property
    def ddp_bucket_mb(self) -> float: ...
    @property
    def ddp_static_graph(self) -> bool: ...
    @property
    def ddp_grad_as_bucket_view(self) -> bool: ...
    @property
    def ddp_compress(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def data(self) -> str: ...
    @property
    def seed(self) -> int: ...


class ParallelStrategy:
    """One process per worker, each holding the whole model, and nothing shared: the base every mode refines."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line: --parallel's help and `leantrain list`
    spelled: ClassVar[str | None] = None  # how a --parallel value names it, where not by its name (dpAxppB)
    launcher: ClassVar[str] = "elastic"  # how --procs N starts the workers: "elastic" (torch's) or "mpirun"
    # Whether a member trains on its own (an ensemble): the loop's collectives are not over the ranks.
    trains_alone: ClassVar[bool] = False
    # Whether `procs auto` may measure processes against threads for this mode (data parallel over gloo).
    chooses_procs: ClassVar[bool] = False
    takes_members: ClassVar[bool] = False  # `members`: a model per worker
    shards_optimizer: ClassVar[bool] = False  # `shard_optimizer`: ZeRO stage 1 over this mode's collectives
    order: ClassVar[int] = 100  # where the mode stands in lists and tables (a new mode: after the built-in ones)

    def __init__(self, parallel: str):
        self.parallel = parallel  # the value as given (a hybrid's carries its shape: dp2xpp2)

    @classmethod
    def accepts(cls, parallel: str) -> bool:
        """Whether ``parallel`` (a --parallel value) names this mode."""
        return parallel == cls.name

    def check(self, config: RunConfig, where: str) -> None:
        """The mode's own rules on the settings: one-line UsageErrors naming the setting and what is allowed."""
        if config.procs == "auto" and not self.chooses_procs:
            raise UsageError(f"{where}: procs auto chooses between processes and threads for --parallel ddp, "
                             f"not {config.parallel}")
        if config.members is not None and not self.takes_members:
            raise UsageError(f"{where}: members are for --parallel ensemble, not {config.parallel}")
        if config.shard_optimizer and not self.shards_optimizer:
            raise UsageError(f"{where}: shard_optimizer is for parallel mpi (the updated slices are gathered over MPI), "
                             f"not parallel {config.parallel}; fsdp shards the optimizer's state over torch.distributed")

    @contextlib.contextmanager
    def process_group(self, world: World, config: RunConfig, device: torch.device) -> Iterator[Dist]:
        """Join this run's processes (torch.distributed: gloo on CPU, NCCL on GPU) for the run; always leave."""
        from leantrain.parallel.dist import process_group
        from leantrain.parallel.mpi import with_master_from_rank0

        with process_group(with_master_from_rank0(world), config.backend, device, config.dist_timeout) as dist:
            yield dist

    def plan(self, config: RunConfig, dist: Dist) -> ParallelPlan:
        """How the model is laid out over the ranks (here: every rank holds all of it)."""
        from leantrain.parallel.plan import ParallelPlan

        return ParallelPlan(dist)

    def check_data(self, config: RunConfig, dataset: Dataset) -> None:
        """What the mode needs of the data set, checked as soon as it is loaded."""

    def member_model(self, config: RunConfig, dist: Dist) -> str | None:
        """The model spec this rank trains, where ranks train different models (an ensemble); else None."""
        return None

    def hooks(self, config: RunConfig, dist: Dist, dataset: Dataset, member: str | None) -> list[Technique]:
        """The mode's part in the training loop, as techniques (ModeHooks): none here."""
        return []


S = TypeVar("S", bound=type[ParallelStrategy])
_MODES: dict[str, type[ParallelStrategy]] = {}


def register_mode(cls: S) -> S:
    """Class decorator: make a parallel mode known (its name must be new)."""
    if cls.name in _MODES:
        raise ValueError(f"parallel mode {cls.name!r} is registered twice")
    if cls.launcher not in ("elastic", "mpirun"):
        raise ValueError(f"parallel mode {cls.name!r}: launcher must be 'elastic' or 'mpirun', got {cls.launcher!r}")
    _MODES[cls.name] = cls
    return cls


def unregister_mode(name: str) -> None:
    """Undo ``register_mode`` (for tests that declare a mode of their own)."""
    del _MODES[name]


def modes() -> dict[str, type[ParallelStrategy]]:
    """Every known mode, in its ``order``. The package imports each file of ``parallel/modes/`` (once: Python keeps
    imported modules), and each registers its mode: a new file needs no list edited."""
    importlib.import_module(MODES_PACKAGE)
    return dict(sorted(_MODES.items(), key=lambda item: (item[1].order, item[0])))


def mode_names() -> tuple[str, ...]:
    return tuple(modes())


def strategy_for(parallel: str, where: str = "parallel") -> ParallelStrategy:
    """The strategy for a --parallel value; one line listing the modes when none accepts it."""
    for cls in modes().values():
        if cls.accepts(parallel):
            return cls(parallel)
    raise UsageError(f"{where}: parallel {parallel!r} is not one of: "
                     + ", ".join(cls.spelled or name for name, cls in modes().items()))


def describe_modes() -> list[tuple[str, str]]:
    """(how --parallel names it, what it is) for every mode."""
    return [(cls.spelled or name, cls.summary) for name, cls in modes().items()]
