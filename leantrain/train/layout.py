"""``--procs auto``: on a CPU machine, one process with every core, or one process per core? Measured.

Neither wins everywhere: a small model at a small batch gains nothing from a second process (the
all-reduce and the framework's fixed costs eat it), while a compute-bound one scales better across
processes than across threads. So both layouts are timed on the user's model and batch, with the same
global batch (N processes x batch B, or 1 process x N threads x batch N*B: the same optimizer steps,
as the data-parallel tests prove), and the faster is taken. Where MPI is installed (mpi4py and its mpirun) and
no DDP knob is set, the processes are also timed under ``--parallel mpi`` (gradients averaged in one flat
buffer by MPI's Allreduce), and the run takes that mode when it is the fastest. The probe is a few real training
steps (forward, backward, optimizer step) after warm-up; its result is cached per machine, torch version,
model, data and batch, so it costs once.

    python -m leantrain.train.layout SPEC.json      (a launched probe worker; rank 0 writes the timing)
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from leantrain import data as data_sets
from leantrain import models
from leantrain.config import RunConfig
from leantrain.data.batches import TensorBatches
from leantrain.errors import UsageError
from leantrain.fileio import write_json
from leantrain.machine import cpu_name
from leantrain.parallel import env as parallel_env
from leantrain.parallel.ddp import release_reducer, wrap_ddp
from leantrain.parallel.dist import Dist, process_group
from leantrain.parallel.launch import WorkersFailed, cores_available, run_local_workers
from leantrain.parallel.mpi import gradient_buffers, mpi_group
from leantrain.parallel.mpirun import run_mpirun
from leantrain.train.adapters import task_for
from leantrain.train.metrics import NOISY_FOREIGN_CORES, ForeignCpuMeter, cache_dir
from leantrain.train.optim import make_optimizer

WARMUP_STEPS, TIMED_STEPS = 3, 12


@dataclass(frozen=True)
class Layout:
    procs: int
    threads: int
    batch_size: int  # per process
    samples_per_s: dict[str, float]  # every layout's measured throughput
    why: str
    cached: bool = False
    parallel: str = "ddp"  # the data-parallel mode of several processes: ddp, or mpi where it was faster

    def record(self) -> dict[str, Any]:
        return asdict(self)


def time_steps(config: RunConfig, dist: Dist) -> float:
    """Global samples/s of this layout: median over timed steps of one training step on every rank (gradients
    averaged by DDP, or under ``--parallel mpi`` by MPI's Allreduce over one flat buffer, as a run does)."""
    torch.manual_seed(config.seed)
    dataset = data_sets.load(config.data, seed=config.seed)
    model = models.build(config.model, dataset)
    mpi = dist.active and config.parallel == "mpi"
    forward = wrap_ddp(model, device_type="cpu") if dist.active and not mpi else model
    buffers = gradient_buffers([p for p in model.parameters() if p.requires_grad]) if mpi else []
    optimizer = make_optimizer(config, model)
    task = task_for(dataset)
    batches = TensorBatches(dataset.x_train, dataset.y_train, config.batch, rank=dist.rank,
                            world_size=dist.world_size)
    times = []
    try:
        for step, (x, y) in enumerate(_cycle(batches)):
            start = time.perf_counter()
            loss = task.loss_sum(task.forward(forward, x, y), y) / task.units(y)
            loss.backward()
            for buffer in buffers:
                buffer.average_(dist)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            dist.barrier()
            if step >= WARMUP_STEPS:
                times.append(dist.max([time.perf_counter() - start])[0])
            if len(times) == TIMED_STEPS:
                break
    finally:
        if isinstance(forward, DistributedDataParallel):
            release_reducer(forward)  # while the group is joined, also on an error (parallel/ddp.py)
    return config.batch * dist.world_size / statistics.median(times)


def _cycle(batches: TensorBatches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        yield from batches.epoch(epoch)
        epoch += 1


def choose(config: RunConfig, cores: int | None = None, say: Any = print) -> Layout:
    """Time 1 x ``cores`` threads against ``cores`` x 1 thread for ``config`` (per-process batch_size B), the
    processes under DDP and, where MPI can run and no DDP knob is set, under MPI too."""
    n = cores or cores_available()
    modes = ("ddp", "mpi") if mpi_usable(config) else ("ddp",)
    key = f"{cpu_name()}|{torch.backends.cpu.get_cpu_capability()}|torch={torch.__version__}|{config.model}|" \
          f"{config.data}|batch={config.batch}|optimizer={config.optimizer}|cores={n}|modes={','.join(modes)}"
    cache = cache_dir() / "layouts.json"
    cached = _read(cache).get(key)
    if cached:
        layout = Layout(**{**cached, "cached": True})
    else:
        layout = _measure(config, n, modes)
        if "not cached" not in layout.why:
            stored = _read(cache)
            stored[key] = {k: v for k, v in asdict(layout).items() if k != "cached"}
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_json(cache, stored)
    rates_text = ", ".join(f"{name} {rate:,.0f} samples/s" for name, rate in layout.samples_per_s.items())
    mode = f" under --parallel {layout.parallel}" if layout.procs > 1 else ""
    say(f"procs auto -> {layout.procs} x {layout.threads} thread(s){mode}, batch {layout.batch_size} per process: "
        f"{layout.why} ({rates_text}{', cached' if layout.cached else ''})")
    return layout


def _measure(config: RunConfig, n: int, modes: tuple[str, ...]) -> Layout:
    """Every layout timed, the fastest taken; a measurement disturbed by other processes says it is not to be
    cached (a busy neighbour collapses multi-threaded runs first)."""
    foreign = ForeignCpuMeter()
    single = time_steps(config.replace(batch_size=config.batch * n, threads=n, parallel="none", procs=None), Dist())
    multi = {mode: _time_launched(config.replace(parallel=mode, procs=n, threads=1), n) for mode in modes}
    # The launched probe's own processes count as foreign here; only a busy machine beyond them taints it.
    disturbed = (foreign.cores() or 0.0) > n + NOISY_FOREIGN_CORES
    rates = {f"1 x {n} threads": single, **{_multi_name(n, mode): rate for mode, rate in multi.items()}}
    best = max(multi, key=lambda mode: multi[mode])  # ddp on a tie: it needs no MPI
    if multi[best] > single:
        layout = Layout(n, 1, config.batch, rates, f"{n} processes ({best}) {multi[best] / single:.2f}x as fast",
                        parallel=best)
    else:
        layout = Layout(1, n, config.batch * n, rates, f"one process {single / multi[best]:.2f}x as fast")
    if disturbed:
        return Layout(layout.procs, layout.threads, layout.batch_size, layout.samples_per_s,
                      layout.why + "; measured while other processes were busy, so not cached", parallel=layout.parallel)
    return layout


def _multi_name(n: int, mode: str) -> str:
    return f"{n} x 1 thread" if mode == "ddp" else f"{n} x 1 thread, {mode}"


def mpi_usable(config: RunConfig) -> bool:
    """Whether ``procs auto`` also times ``--parallel mpi``: on the CPU, MPI installed (mpi4py and an mpirun), and
    none of DDP's own knobs set (they ask for DDP)."""
    from leantrain.parallel.mpi import mpi_module
    from leantrain.parallel.mpirun import mpirun_path

    defaults = RunConfig()
    if any(getattr(config, k) != getattr(defaults, k) for k in DDP_KNOBS) or config.device.startswith("cuda"):
        return False
    try:
        mpi_module()
        mpirun_path()
    except UsageError:
        return False
    return True


DDP_KNOBS = ("ddp_bucket_mb", "ddp_static_graph", "ddp_grad_as_bucket_view", "ddp_compress", "backend")


def _time_launched(config: RunConfig, procs: int) -> float:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        spec, result = Path(folder) / "spec.json", Path(folder) / "result.json"
        write_json(spec, {"config": config.replace(procs=procs, threads=1).to_dict(), "result": str(result)})
        try:
            if config.parallel == "mpi":
                run_mpirun(procs, ["-m", "leantrain.train.layout", str(spec)], cores_available())
            else:
                run_local_workers(procs, ["-m", "leantrain.train.layout", str(spec)])
        except WorkersFailed:
            return 0.0  # the layout failed here: never chosen
        if not result.exists():
            return 0.0
        return float(json.loads(result.read_text())["samples_per_s"])


def _read(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    config = RunConfig.from_dict(spec["config"])
    torch.set_num_threads(1)
    world, cpu = parallel_env.detect(), torch.device("cpu")
    group = mpi_group(world, cpu, config.dist_timeout) if config.parallel == "mpi" else \
        process_group(world, "gloo", cpu, config.dist_timeout)
    with group as dist:
        rate = time_steps(config, dist)
        if dist.is_main:
            write_json(Path(spec["result"]), {"samples_per_s": rate})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
