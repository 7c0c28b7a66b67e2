"""The process group and the small ``Dist`` context that the loop, metrics, checkpoints and records see.

On one process every method returns at once without touching torch.distributed, so single-process
runs pay nothing. Its collectives are for bookkeeping (metric sums once per epoch, a flag, an object);
gradients are averaged by the parallel wrapper: DDP, MPI (mpi.py), or ``flat_average_`` below (a hybrid's replicas).

A ``Dist`` may span a sub-group of the world (``within``): the data-parallel replicas of a pipeline stage
sum their metrics among themselves, while flags, memory figures and random states go over the whole world.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as torch_dist

from leantrain.errors import UsageError
from leantrain.parallel.env import World
from leantrain.techniques.base import Collectives

BACKENDS = ("auto", "gloo", "nccl")


@dataclass
class Dist:
    world: World = field(default_factory=lambda: World("none"))
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where collective tensors live
    group: Any = None  # a torch.distributed ProcessGroup: these ranks only; None: the whole world

    @property
    def rank(self) -> int:
        return self.world.rank if self.group is None else torch_dist.get_rank(self.group)

    @property
    def world_size(self) -> int:
        return self.world.world_size if self.group is None else torch_dist.get_world_size(self.group)

    @property
    def is_main(self) -> bool:
        """Rank 0 of the whole world (of a sub-group too): the one process that writes files and prints."""
        return self.world.rank == 0

    def global_rank(self, group_rank: int) -> int:
        """The world rank of this group's rank ``group_rank``."""
        return group_rank if self.group is None else torch_dist.get_global_rank(self.group, group_rank)

    def within(self, group: Any) -> Dist:
        """The same world, with collectives over ``group`` (a sub-group this rank belongs to)."""
        return Dist(self.world, self.backend, self.device, group)

    @property
    def active(self) -> bool:
        return self.backend is not None

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over ranks (float64: exact for counts up to 2**53)."""
        return self._reduce(values, torch_dist.ReduceOp.SUM)

    def max(self, values: Sequence[float]) -> list[float]:
        return self._reduce(values, torch_dist.ReduceOp.MAX)

    def _reduce(self, values: Sequence[float], op: Any) -> list[float]:
        if not self.active:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(tensor, op=op, group=self.group)
        return tensor.tolist()

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks of a tensor already on ``device``."""
        if self.active:
            torch_dist.all_reduce(tensor, group=self.group)
        return tensor

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(out, value, group=self.group)
        return out

    def broadcast(self, value: Any) -> Any:
        """Rank 0's (of this group) ``value`` on every rank."""
        if not self.active:
            return value
        box = [value]
        torch_dist.broadcast_object_list(box, src=self.global_rank(0), group=self.group)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier(group=self.group)

    def any(self, flag: bool) -> bool:
        """True on every rank when any rank says True: all ranks agree and stop together."""
        return self.max([1.0 if flag else 0.0])[0] > 0


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise UsageError(f"backend nccl needs CUDA devices, but this run is on {device}; use gloo (or auto)")
    return backend


@contextlib.contextmanager
def process_group(world: World, backend: str, device: torch.device, timeout_s: float) -> Iterator[Dist]:
    """Join the process group for ``world`` (nothing to join on one unlaunched process) and always leave it.

    Rendezvous at ``world.init_method`` (e.g. a shared ``file://`` path) or else at rank 0's
    MASTER_ADDR:MASTER_PORT; either way it fails, on every rank, within ``timeout_s``.
    """
    if not world.launched:
        yield Dist(world, None, device)
        return
    backend = resolve_backend(backend, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    where = world.init_method.split("://")[-1] if world.init_method else f"{world.master_addr}:{world.master_port}"
    try:
        if world.init_method:
            torch_dist.init_process_group(backend, init_method=world.init_method, rank=world.rank,
                                          world_size=world.world_size, timeout=timeout)
        else:
            torch_dist.init_process_group(backend, store=_store(world, timeout), rank=world.rank,
                                          world_size=world.world_size, timeout=timeout)
    except (RuntimeError, ValueError) as e:  # DistStoreError, DistNetworkError are RuntimeErrors
        if isinstance(e, UsageError):
            raise
        first_line = (str(e).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"rank {world.rank} could not reach the rendezvous at {where} within "
                         f"{timeout_s:g}s ({type(e).__name__}: {first_line})") from None
    try:
        yield Dist(world, backend, device)
    finally:
        torch_dist.destroy_process_group()


def _store(world: World, timeout: datetime.timedelta) -> torch_dist.Store:
    """The key-value store the ranks meet in: torchrun's agent serves one; otherwise rank 0 serves it.

    Keys get a prefix per torchrun restart: a restarted worker group meets in the agent's store again,
    and must not read the addresses its killed predecessors left there."""
    if not world.master_addr or not world.master_port:
        raise UsageError(f"launched by {world.launcher} as rank {world.rank} of {world.world_size}, but with no "
                         "rendezvous address: set MASTER_ADDR and MASTER_PORT (rank 0's host and a free port)")
    agent_serves = world.launcher == "torchrun" and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = torch_dist.TCPStore(world.master_addr, world.master_port, world.world_size,
                                is_master=world.rank == 0 and not agent_serves, timeout=timeout)
    return torch_dist.PrefixStore(f"leantrain/restart{world.restart_count}/", store)


def free_port() -> int:
    """A port nobody listens on now (the OS picks it); for launching local workers, never a fixed number."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flat_views(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Consecutive views of the 1-D ``flat``, shaped like ``like`` (a flat buffer's share for each tensor)."""
    views, offset = [], 0
    for tensor in like:
        views.append(flat[offset : offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()
    return views


def flat_average_(tensors: list[torch.Tensor], dist: Collectives) -> None:
    """One flat buffer of every tensor, summed over the ranks of ``dist``, divided by their number, copied back:
    a hybrid's average over a pipeline stage's replicas (MPI keeps a buffer across steps: mpi.GradientBuffer)."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce_(flat)
    flat /= dist.world_size
    for tensor, averaged in zip(tensors, flat_views(flat, tensors)):
        tensor.copy_(averaged)
