"""MPI: mpirun as a launcher for torch.distributed, and seed 003's own method (``--parallel mpi``).

Seed 003 averages gradients itself: after backward, every gradient is copied into one flat buffer and
summed over ranks with mpi4py's ``Allreduce``, then divided by the number of ranks; parameters are
broadcast from rank 0 once at the start. Here that is one more parallel wrap, and ``MpiDist`` gives the
loop, metrics and checkpoints the same small Dist interface over MPI, so the rest of leantrain cannot
tell which one is underneath. mpi4py works on host memory: CUDA tensors are staged through the CPU.
The flat buffer is kept from step to step and the averaged gradients are handed back as views of it:
no buffer is allocated and none is copied back per step (a fresh 20 MB buffer per step costs page faults).

``--shard-optimizer`` adds ZeRO stage 1 (Rajbhandari et al., 2020): the parameters become views of one
flat buffer, and rank r's optimizer holds only elements [start_r, end_r) of it, so each rank keeps 1/N of
the optimizer's state and does 1/N of its update. The gradients are still averaged whole (gradient
clipping, guards and logs see them as before); after the update, every rank's slice is gathered into
every rank's buffer. The update is element-wise (Adam, AdamW, SGD), so a slice's update equals the
unsharded update of the same elements.

Under ``mpirun ... --parallel ddp``, mpirun only starts the processes: rank 0 picks the rendezvous
address for torch.distributed (its host and a free port) and broadcasts it over MPI, unless
MASTER_ADDR/MASTER_PORT are set.
"""
from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from leantrain.errors import UsageError
from leantrain.parallel import failures
from leantrain.parallel.dist import Dist, flat_views, free_port
from leantrain.parallel.env import World
from leantrain.parallel.plan import ModeHooks, ParallelPlan
from leantrain.parallel.watchdog import CollectiveWatchdog
from leantrain.techniques.base import Collectives, StepState

INSTALL_HINT = "pip install 'leantrain[mpi]' (mpi4py and an Open MPI that pip installs)"


def mpi_module() -> Any:
    """mpi4py's MPI module, or one line saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise UsageError(f"MPI is not available here ({e}); {INSTALL_HINT}") from None
    return MPI


def with_master_from_rank0(world: World) -> World:
    """Under mpirun with no MASTER_ADDR/PORT: rank 0's address and a free port of its, broadcast over MPI."""
    if world.launcher != "mpi" or (world.master_addr and world.master_port) or world.init_method:
        return world
    comm = mpi_module().COMM_WORLD
    if world.rank == 0:
        one_host = world.local_world_size == world.world_size
        choice = ("127.0.0.1" if one_host else socket.gethostname(), free_port())
    else:
        choice = None
    addr, port = comm.bcast(choice, root=0)
    return dataclasses.replace(world, master_addr=addr, master_port=port)


class MpiDist(Dist):
    """The Dist interface over mpi4py's COMM_WORLD (float64 reductions, pickled objects). Every blocking call is
    made under a watchdog (watchdog.py): MPI waits for a missing rank forever, the watchdog ends the job."""

    def __init__(self, world: World, device: torch.device, timeout_s: float | None = None):
        super().__init__(world, "mpi", device)
        self.MPI = mpi_module()
        self.comm = self.MPI.COMM_WORLD
        self.timeout_s = timeout_s
        self.watchdog = CollectiveWatchdog(timeout_s, self._abort) if timeout_s else None

    def waiting(self, what: str) -> contextlib.AbstractContextManager[None]:
        return self.watchdog.waiting(what) if self.watchdog else contextlib.nullcontext()

    def _abort(self, what: str, waited_s: float) -> None:
        failures.report(self.rank, f"waited {waited_s:.0f}s in MPI {what} for the other ranks (--dist-timeout "
                        f"{self.timeout_s:g}): one of them is hung or dead; every rank is stopped", status=1)
        self.comm.Abort(1)  # Open MPI ends every rank of the job, a stopped one too

    def _reduce(self, values: Sequence[float], op: Any) -> list[float]:
        import numpy as np

        buffer = np.array([float(v) for v in values], dtype=np.float64)
        mpi_op = self.MPI.MAX if op == "max" else self.MPI.SUM
        with self.waiting("Allreduce"):
            self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=mpi_op)
        return buffer.tolist()

    def sum(self, values: Sequence[float]) -> list[float]:
        return self._reduce(values, "sum")

    def max(self, values: Sequence[float]) -> list[float]:
        return self._reduce(values, "max")

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        host = tensor.detach().cpu().contiguous()
        with self.waiting("Allreduce"):
            self.comm.Allreduce(self.MPI.IN_PLACE, host.numpy(), op=self.MPI.SUM)
        tensor.copy_(host)
        return tensor

    def gather(self, value: Any) -> list[Any]:
        with self.waiting("allgather"):
            return list(self.comm.allgather(value))

    def broadcast(self, value: Any) -> Any:
        with self.waiting("bcast"):
            return self.comm.bcast(value, root=0)

    def barrier(self) -> None:
        with self.waiting("Barrier"):
            self.comm.Barrier()

    def close(self) -> None:
        if self.watchdog:
            self.watchdog.close()


SRUN_HINT = "srun --mpi=pmix (srun --mpi=list must name pmix: Slurm's mpi/pmix plugin, on Debian libpmix-dev)"


@contextlib.contextmanager
def mpi_group(world: World, device: torch.device, timeout_s: float | None = None) -> Iterator[Dist]:
    """The MPI world as a Dist; with ``timeout_s``, a rank that waits longer in a collective ends the job. The ranks
    come from mpirun, or from srun with an interface MPI can join them through (``srun --mpi=pmix``)."""
    if world.launcher == "slurm" and world.pmi is None:
        # Each rank would start MPI alone (a world of 1) and train apart from the others: refuse before MPI starts.
        raise UsageError(f"--parallel mpi under srun needs an MPI interface, and this srun set up none: launch with "
                         f"{SRUN_HINT}")
    if world.launcher not in ("mpi", "slurm"):
        raise UsageError("--parallel mpi runs under mpirun or srun --mpi=pmix: launch with mpirun -n N python -m "
                         "leantrain train ..., or add --procs N and leantrain calls mpirun for you")
    dist = MpiDist(world, device, timeout_s)
    if dist.comm.Get_size() != world.world_size:
        raise UsageError(_world_mismatch(world, dist.comm.Get_size(), dist.MPI))
    try:
        yield dist
    finally:
        dist.close()


def _world_mismatch(world: World, size: int, mpi: Any) -> str:
    """Why MPI's COMM_WORLD is not the world the launcher started, and what launches it right."""
    library = mpi.Get_library_version().strip().splitlines()[0].split(",")[0]  # "Open MPI v5.0.11"
    if world.pmi == "pmi2" and "Open MPI" in library and not library.startswith("Open MPI v4"):
        return (f"PMI-2 (srun --mpi=pmi2) started {world.world_size} ranks but {library} speaks PMIx only, so each "
                f"rank is alone in MPI's COMM_WORLD (size {size}); launch with {SRUN_HINT}")
    launcher = "srun" if world.launcher == "slurm" else "mpirun"
    return (f"{launcher} says {world.world_size} ranks but MPI's COMM_WORLD has {size}: mpi4py's MPI ({library}) "
            f"cannot join ranks through {world.pmi or 'this launcher'}; launch with this MPI's own mpirun, or {SRUN_HINT}")


class GradientBuffer:
    """One flat buffer for the gradients of ``params`` (one dtype and device), kept across steps: each step's
    gradients are divided by the number of ranks into it, summed over the ranks in place, and handed back to the
    parameters as views of it."""

    def __init__(self, params: Sequence[nn.Parameter]):
        self.params = list(params)
        self.flat = torch.zeros(sum(p.numel() for p in self.params), dtype=self.params[0].dtype,
                                device=self.params[0].device)
        self.views = flat_views(self.flat, self.params)

    def average_(self, dist: Collectives) -> None:
        for param, view in zip(self.params, self.views):
            if param.grad is None:  # a parameter unused on this rank still takes part, as zeros
                view.zero_()
            else:  # divided on the way in: no second pass over the buffer (exact for a power-of-two world)
                torch.div(param.grad, dist.world_size, out=view)
        dist.all_reduce_(self.flat)
        for param, view in zip(self.params, self.views):
            param.grad = view


def gradient_buffers(params: Sequence[nn.Parameter]) -> list[GradientBuffer]:
    """One buffer per (device, dtype) among ``params``, in their order."""
    groups: dict[tuple[torch.device, torch.dtype], list[nn.Parameter]] = {}
    for param in params:
        groups.setdefault((param.device, param.dtype), []).append(param)
    return [GradientBuffer(group) for group in groups.values()]


class ShardedParameters:
    """ZeRO stage 1: the trainable parameters as views of one flat buffer; this rank's optimizer updates the
    slice ``shard`` (a parameter sharing that buffer's memory), and ``gather_`` fills in the other ranks' slices."""

    def __init__(self, params: Sequence[nn.Parameter], rank: int, world_size: int):
        kinds = {(p.device, p.dtype) for p in params}
        if len(kinds) != 1:
            found = ", ".join(sorted(f"{dtype} on {device}" for device, dtype in kinds))
            raise UsageError(f"--shard-optimizer needs the trainable parameters in one dtype on one device; this model "
                             f"has {found}")
        self.params = list(params)
        self.values = torch.cat([p.detach().reshape(-1) for p in self.params])
        for param, view in zip(self.params, flat_views(self.values, self.params)):
            param.data = view
        total = self.values.numel()
        self.bounds = [total * r // world_size for r in range(world_size + 1)]  # rank r: [bounds[r], bounds[r+1])
        self.start, self.end = self.bounds[rank], self.bounds[rank + 1]
        self.shard = nn.Parameter(self.values[self.start : self.end])  # the same memory, not a copy
        self.gradients = GradientBuffer(self.params)

    def average_gradients(self, dist: Collectives) -> None:
        self.gradients.average_(dist)
        self.shard.grad = self.gradients.flat[self.start : self.end]

    def gather_(self, dist: MpiDist) -> None:
        """Every rank's updated slice into every rank's buffer (one Allgatherv, in place)."""
        host = self.values if self.values.device.type == "cpu" else self.values.cpu()
        size = host.element_size()  # gathered as bytes: a copy, whatever the dtype
        counts = [(b - a) * size for a, b in zip(self.bounds, self.bounds[1:])]
        offsets = [a * size for a in self.bounds[:-1]]
        with dist.waiting("Allgatherv"):
            dist.comm.Allgatherv(dist.MPI.IN_PLACE, [host.view(torch.uint8).numpy(), counts, offsets, dist.MPI.BYTE])
        if host is not self.values:
            self.values.copy_(host)

    def drop_gradients(self) -> None:
        """The parameters' gradients are views of the buffer, which the optimizer's zero_grad (over the slice) does not
        clear: left in place, the next backward would add to them."""
        for param in self.params:
            param.grad = None
        self.shard.grad = None


class ShardedOptimizerPlan(ParallelPlan):
    """Every rank holds the whole model; the optimizer is built over this rank's slice of it (ZeRO stage 1)."""

    def __init__(self, dist: Dist):
        super().__init__(dist)
        self.sharded: ShardedParameters | None = None

    def prepare(self, model: nn.Module, dataset: Any) -> nn.Module:
        params = [p for p in model.parameters() if p.requires_grad]
        self.sharded = ShardedParameters(params, self.dist.rank, self.dist.world_size)
        return model

    def optimized(self, module: nn.Module) -> nn.Module:
        assert self.sharded is not None, "prepare() first"
        return nn.ParameterList([self.sharded.shard])

    def optimizer_state(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> Any:
        return self.dist.gather(optimizer.state_dict())  # each rank's slice's state, in rank order

    def load_optimizer_state(self, module: nn.Module, optimizer: torch.optim.Optimizer, saved: Any) -> None:
        optimizer.load_state_dict(saved[self.dist.rank])

    def record(self) -> dict[str, Any]:
        assert self.sharded is not None
        bounds = self.sharded.bounds
        return {"optimizer_sharded": {"ranks": self.dist.world_size,
                                      "elements_per_rank": [b - a for a, b in zip(bounds, bounds[1:])]}}


class MpiDataParallel(ModeHooks):
    """Gradients averaged over MPI ranks once per optimizer step, after the step's last micro-batch; under a
    ShardedOptimizerPlan, every rank's updated slice gathered as part of the optimizer's step (a step post-hook:
    before any technique or log reads the weights)."""

    name = "mpi"
    parallel_modes = frozenset({"mpi"})

    def __init__(self) -> None:
        self.sharded: ShardedParameters | None = None
        self._gather_hook: Any = None

    def describe(self) -> str:
        return "mpi"

    def on_fit_start(self, state: StepState) -> None:
        params = [p.data for p in state.model.parameters()]
        flat = torch.cat([p.reshape(-1) for p in params])
        if state.dist.rank != 0:
            flat.zero_()
        state.dist.all_reduce_(flat)  # rank 0's values, everyone else's zeros: a broadcast from rank 0
        for param, value in zip(params, flat_views(flat, params)):
            param.copy_(value)
        plan = getattr(state, "plan", None)
        self.sharded = plan.sharded if isinstance(plan, ShardedOptimizerPlan) else None
        if self.sharded is not None:
            sharded, dist = self.sharded, state.dist
            assert isinstance(dist, MpiDist)
            state.sync_gradients = lambda: sharded.average_gradients(dist)
            self._gather_hook = state.optimizer.register_step_post_hook(lambda *_: sharded.gather_(dist))
            return
        buffers = gradient_buffers([p for p in state.model.parameters() if p.requires_grad])

        def average() -> None:
            for buffer in buffers:
                buffer.average_(state.dist)

        state.sync_gradients = average

    def before_step(self, state: StepState) -> None:
        if self.sharded is not None:
            self.sharded.drop_gradients()

    def on_fit_end(self, state: StepState) -> None:
        state.sync_gradients = _nothing
        if self._gather_hook is not None:
            self._gather_hook.remove()
            self._gather_hook = None
        if self.sharded is not None:
            self.sharded.drop_gradients()
            self.sharded = None


def _nothing() -> None:
    return None
