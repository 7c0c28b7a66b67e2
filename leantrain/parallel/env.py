"""Who launched us, and where this process stands in the world: the shape of Lightning's cluster environments.

Each launcher answers the same questions (rank, world size, local rank, how many processes per node,
where rank 0 listens) from the variables it sets. Detection tries them in order; none = one process.
    torchrun / torch.distributed.run   RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT
    Open MPI (mpirun)                  OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE
    MPICH / Intel MPI (PMI)            PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS
    Slurm (srun)                       SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NNODES, SLURM_NODELIST
torchrun is tried first: under ``srun torchrun ...`` or ``mpirun torchrun ...`` its variables are the
ones that describe the worker processes.

How MPI's ranks can find each other is a separate question (``World.pmi``): the process-management interface
the launcher set up. ``srun --mpi=pmix`` sets PMIX_RANK (as Open MPI 5's mpirun does), ``srun --mpi=pmi2`` and
MPICH's mpiexec set PMI_RANK and PMI_FD, and a plain ``srun`` sets neither: its ranks would each start MPI alone.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from leantrain.errors import UsageError


@dataclass(frozen=True)
class World:
    launcher: str  # "torchrun", "mpi", "slurm" or "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str | None = None  # where rank 0's store listens; None: the launcher gives no address
    master_port: int | None = None
    restart_count: int = 0  # torchrun's restarts of this worker group (a restarted group resumes)
    init_method: str | None = None  # LEANTRAIN_INIT_METHOD, e.g. file:///shared/rendezvous: instead of a TCP port
    pmi: str | None = None  # "pmix" or "pmi2": how MPI can join these ranks (None: the launcher set up neither)

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))

    @property
    def launched(self) -> bool:
        return self.launcher != "none"


def detect(env: Mapping[str, str] | None = None) -> World:
    env = os.environ if env is None else env
    for reader in (_torchrun, _open_mpi, _pmi, _slurm):
        world = reader(env)
        if world is not None:
            if not 0 <= world.rank < world.world_size or not 0 <= world.local_rank < world.local_world_size:
                raise UsageError(f"{world.launcher} says rank {world.rank} (local {world.local_rank}) of "
                                 f"{world.world_size} (local {world.local_world_size}): not a valid place in the world")
            return dataclasses.replace(world, init_method=env.get("LEANTRAIN_INIT_METHOD") or None, pmi=_pmi_kind(env))
    return World("none")


def _pmi_kind(env: Mapping[str, str]) -> str | None:
    if "PMIX_RANK" in env:
        return "pmix"
    if "PMI_RANK" in env or "PMI_FD" in env:
        return "pmi2"
    return None


def _int(env: Mapping[str, str], key: str, default: int | None = None) -> int:
    value = env.get(key)
    if value is None:
        if default is None:
            raise UsageError(f"launcher variable {key} is missing")
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"launcher variable {key}={value!r} is not an integer") from None


def _port(env: Mapping[str, str]) -> int | None:
    return _int(env, "MASTER_PORT") if "MASTER_PORT" in env else None


def _torchrun(env: Mapping[str, str]) -> World | None:
    if "RANK" not in env or "WORLD_SIZE" not in env or "LOCAL_RANK" not in env:
        return None
    world_size = _int(env, "WORLD_SIZE")
    return World(
        "torchrun", _int(env, "RANK"), world_size, _int(env, "LOCAL_RANK"),
        _int(env, "LOCAL_WORLD_SIZE", world_size), env.get("MASTER_ADDR"), _port(env),
        _int(env, "TORCHELASTIC_RESTART_COUNT", 0),
    )


def _open_mpi(env: Mapping[str, str]) -> World | None:
    if "OMPI_COMM_WORLD_RANK" not in env:
        return None
    size = _int(env, "OMPI_COMM_WORLD_SIZE")
    return World(
        "mpi", _int(env, "OMPI_COMM_WORLD_RANK"), size, _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", 0),
        _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", size), env.get("MASTER_ADDR"), _port(env),
    )


def _pmi(env: Mapping[str, str]) -> World | None:
    if "PMI_RANK" not in env or "PMI_SIZE" not in env:
        return None
    size = _int(env, "PMI_SIZE")
    return World(
        "mpi", _int(env, "PMI_RANK"), size, _int(env, "MPI_LOCALRANKID", 0), _int(env, "MPI_LOCALNRANKS", size),
        env.get("MASTER_ADDR"), _port(env),
    )


# Set by a process that Slurm started as one task but that starts its runs' workers itself (an experiment's job under
# --executor slurm): its value names that step, "<job id>.<step id>", which is then no launch of ranks. A step started
# inside it (another srun) has another id and is a launch again.
NOT_A_LAUNCH = "LEANTRAIN_SLURM_STEP_NOT_A_LAUNCH"


def slurm_step(env: Mapping[str, str]) -> str:
    """This Slurm step's "<job id>.<step id>" ("" outside one)."""
    job, step = env.get("SLURM_JOB_ID"), env.get("SLURM_STEP_ID")
    return f"{job}.{step}" if job and step else ""


def _slurm(env: Mapping[str, str]) -> World | None:
    # An interactive allocation (salloc) sets SLURM_JOB_ID but not SLURM_PROCID: that is not a launch.
    if "SLURM_PROCID" not in env or "SLURM_NTASKS" not in env:
        return None
    if env.get(NOT_A_LAUNCH) and env.get(NOT_A_LAUNCH) == slurm_step(env):
        return None
    size, nodes = _int(env, "SLURM_NTASKS"), _int(env, "SLURM_NNODES", 1)
    addr = env.get("MASTER_ADDR") or first_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST", ""))
    port = _port(env)
    if port is None and "SLURM_JOB_ID" in env:
        # Every task derives the same port from the job id, as Lightning does: no task can pick a free one alone.
        port = 10000 + _int(env, "SLURM_JOB_ID") % 20000
    return World("slurm", _int(env, "SLURM_PROCID"), size, _int(env, "SLURM_LOCALID", 0), max(1, size // nodes),
                 addr or None, port)


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: 'gpu[003-005,9],cpu1' -> 'gpu003'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        return ""
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]
