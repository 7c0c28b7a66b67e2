"""Threads or processes? 1 process x 1 thread, 1 process x 2 threads and 2 DDP processes x 1 thread, side by side,
and what ``--procs auto`` picks; with ``--ddp-knobs``, DDP's bucket size, static graph, gradient-as-bucket-view and
fp16 all-reduce, and ``--parallel mpi`` with and without ``--shard-optimizer``, on the compute-bound case instead,
beside their ceiling (two independent one-thread runs at once, no communication) and the reference
``--parallel ddp`` must match: a hand-written DDP loop (plain ``DistributedDataParallel`` with its defaults, gloo, a
FileStore rendezvous, the same data, model, initial weights, 512 per rank, Adam and lr, no leantrain code in the
step; ``hand_written_ddp``). The knob rows run interleaved, each beside the CPU other processes used meanwhile.

Each case trains the same model in every layout, interleaved and repeated; multi-process layouts are
launched exactly as a user launches them (``leantrain train --parallel ddp --procs 2``). Throughput is
the run's median samples/s over epochs (the first optimizer step of each process left out).
Scaling efficiency = 2-process samples/s / (2 x 1-process-1-thread samples/s), per repeat (per-worker batch B).
The auto bar compares equal global batches: ``--procs auto`` against the better of 1 process x 2 threads
at batch 2B and 2 processes x 1 thread at batch B (its probe is cached after the first repeat, in a
fresh cache folder per benchmark run). Also measures what the Dist context costs a single process.

    python benchmarks/parallel.py [--repeats 3] [--epochs 2]
    python benchmarks/parallel.py --ddp-knobs [--repeats 3] [--epochs 2] [--knobs defaults 5 mpi]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from leantrain.config import RunConfig
from leantrain.experiments.report import median_spread
from leantrain.machine import cpu_name
from leantrain.parallel.dist import Dist
from leantrain.train.metrics import NOISY_FOREIGN_CORES, ForeignCpuMeter
from leantrain.train.run import execute

CASES: dict[str, dict[str, Any]] = {
    "seed MLP, batch 64": {"model": "mlp", "data": "imagenet-sim", "batch_size": 64, "lr": 1e-3},
    "seed MLP, batch 2048": {"model": "mlp", "data": "imagenet-sim", "batch_size": 2048, "lr": 6e-3},
    "MLP 512-2048-2048-20, batch 512": {"model": "mlp:hidden=2048,depth=2", "data": "gpt3-sim:n=20000",
                                        "batch_size": 512, "lr": 1e-3},
    "CNN on cifar10-sim, batch 64": {"model": "cnn", "data": "cifar10-sim:n=4000", "batch_size": 64, "lr": 1e-3},
}
# name -> (processes, threads per process, batch multiplier)
LAYOUTS: dict[str, tuple[int | str, int | None, int]] = {
    "1 proc x 1 thread": (1, 1, 1), "1 proc x 2 threads": (1, 2, 1), "2 procs x 1 thread": (2, 1, 1),
           "1 proc x 2 threads, batch 2B": (1, 2, 2), "procs auto": ("auto", None, 1)}


# name -> data-parallel settings (config keys; DDP unless parallel says otherwise), each on 2 processes x 1 thread,
# against 1 process x 1 thread.
DDP_KNOBS: dict[str, dict[str, Any]] = {
    "defaults (25 MB buckets, grad views)": {},
    "5 MB buckets": {"ddp_bucket_mb": 5},
    "100 MB buckets": {"ddp_bucket_mb": 100},
    "static graph": {"ddp_static_graph": True},
    "no grad views": {"ddp_grad_as_bucket_view": False},
    "fp16 all-reduce (half the bytes)": {"ddp_compress": "fp16"},
    "--parallel mpi (Open MPI's Allreduce, shared memory)": {"parallel": "mpi"},
    "--parallel mpi --shard-optimizer (ZeRO stage 1)": {"parallel": "mpi", "shard_optimizer": True},
}
KNOBS_CASE = "MLP 512-2048-2048-20, batch 512"
CEILING = "ceiling: 2 independent runs x 1 thread, no DDP"
HAND_WRITTEN = "hand-written DDP loop (plain DistributedDataParallel, gloo, FileStore)"
RUN_LIMIT_S = 300  # per epoch, for every launched arm: a hung rank ends the benchmark with its log, never blocks it


def run_layout(case: dict, procs: int | str, threads: int | None, epochs: int, env: dict) -> dict:
    values = {**case, "epochs": epochs, "device": "cpu", **({"threads": threads} if threads else {})}
    if procs == 1:
        return execute(RunConfig.from_dict(values), quiet=True)
    values.setdefault("parallel", "ddp")
    with tempfile.TemporaryDirectory() as out:
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]
        try:
            done = subprocess.run([sys.executable, "-m", "leantrain", "train", *flags, "--procs", str(procs), "--quiet",
                                   "--out", out], capture_output=True, text=True, env=env, timeout=RUN_LIMIT_S * epochs)
        except subprocess.TimeoutExpired as e:
            sys.exit(f"{procs} procs still running after {RUN_LIMIT_S * epochs} s:\n{(e.stderr or b'')[-3000:]!r}")
        if done.returncode != 0:
            sys.exit(f"{procs} procs failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        (path,) = Path(out).glob("*.json")
        return json.loads(path.read_text())


def run_two_alone(case: dict, epochs: int, env: dict) -> float:
    """Two independent 1-process x 1-thread runs started together, no communication between them: their summed
    samples/s. Against 2 x one run alone it is the ceiling of any data-parallel scheme on these cores (what
    sharing caches, memory bandwidth and clocks leaves), before a byte is communicated."""
    values = {**case, "epochs": epochs, "device": "cpu", "threads": 1}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]
    with tempfile.TemporaryDirectory() as out:
        runs = [subprocess.Popen([sys.executable, "-m", "leantrain", "train", *flags, "--quiet", "--out", f"{out}/{i}"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
        for run in runs:
            try:
                _, err = run.communicate(timeout=RUN_LIMIT_S * epochs)
            except subprocess.TimeoutExpired:
                for other in runs:
                    other.kill()
                sys.exit(f"an independent run still running after {RUN_LIMIT_S * epochs} s")
            if run.returncode != 0:
                sys.exit(f"an independent run failed (exit {run.returncode}):\n{err[-3000:]}")
        records = [json.loads(next(Path(f"{out}/{i}").glob("*.json")).read_text()) for i in range(2)]
    return sum(r["summary"]["median_samples_per_s"] for r in records)


def hand_written_ddp(case: dict, epochs: int, env: dict) -> float:
    """The reference a user would write: 2 processes x 1 thread, plain ``DistributedDataParallel`` (its defaults),
    gloo over a FileStore, the same data, model, initial weights, per-rank batch (slices of a shuffled order, as
    leantrain's tensor batches), Adam and lr; no leantrain code in the step. Samples/s as leantrain's record
    measures them: the epoch's global samples over the slowest rank's time, the first step of the first epoch
    left out, median over epochs."""
    with tempfile.TemporaryDirectory() as folder:
        logs = [Path(folder) / f"rank{rank}.log" for rank in range(2)]
        ranks = [subprocess.Popen([sys.executable, __file__, "--hand-written-rank", str(rank), folder, json.dumps(case),
                                   str(epochs)], env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
                 for rank, log in zip(range(2), logs)]
        deadline = time.monotonic() + RUN_LIMIT_S * epochs
        while any(rank.poll() is None for rank in ranks):
            failed = [(r, log) for r, log in zip(ranks, logs) if r.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:  # the other rank would wait until the group's timeout
                for rank in ranks:
                    rank.kill()
                why = f"exit {failed[0][0].returncode}" if failed else f"still running after {RUN_LIMIT_S * epochs} s"
                sys.exit(f"the hand-written DDP loop failed ({why}):\n" + "\n".join(log.read_text()[-1500:] for log in logs))
            time.sleep(0.2)
        if any(rank.returncode for rank in ranks):
            sys.exit(f"the hand-written DDP loop failed:\n{logs[0].read_text()[-1500:]}\n{logs[1].read_text()[-1500:]}")
        return float(json.loads((Path(folder) / "rate.json").read_text())["samples_per_s"])


def hand_written_rank(rank: int, folder: str, case: dict, epochs: int, world: int = 2) -> None:
    """One rank of ``hand_written_ddp``."""
    import datetime

    import torch.distributed as torch_dist
    from torch.nn.parallel import DistributedDataParallel

    from leantrain.data import load
    from leantrain.models import build

    torch.set_num_threads(1)
    store = torch_dist.FileStore(f"{folder}/store", world)
    torch_dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                                  timeout=datetime.timedelta(seconds=300))
    try:
        data = load(case["data"], seed=0)
        torch.manual_seed(0)
        model = DistributedDataParallel(build(case["model"], data))
        optimizer = torch.optim.Adam(model.parameters(), lr=case["lr"])
        loss_fn, batch = torch.nn.CrossEntropyLoss(), case["batch_size"]
        share = len(data.x_train) // world
        rates = []
        for epoch in range(epochs):
            order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(epoch))
            mine = order[rank::world][:share]
            torch_dist.barrier()
            start, timed = time.perf_counter(), 0
            for step, first in enumerate(range(0, share, batch)):
                index = mine[first:first + batch]
                x, y = data.x_train.index_select(0, index), data.y_train.index_select(0, index)
                loss_fn(model(x), y).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if epoch == 0 and step == 0:  # warm-up, as leantrain's first step of a process
                    start = time.perf_counter()
                else:
                    timed += len(index)
            slowest = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
            torch_dist.all_reduce(slowest, op=torch_dist.ReduceOp.MAX)
            rates.append(timed * world / float(slowest))
        if rank == 0:
            (Path(folder) / "rate.json").write_text(json.dumps({"samples_per_s": statistics.median(rates)}))
    finally:
        # DDP's reducer holds the group: freed after the group is left, it would destroy it with the GIL held, and a
        # gloo worker still dropping the last all-reduce's tensors waits for the GIL (a hang at exit; see
        # leantrain.parallel.ddp.DataParallel.release). Freed first, the group dies in destroy_process_group.
        model = optimizer = None  # noqa: F841
        torch_dist.destroy_process_group()


def dist_cost_us() -> float:
    """Microseconds the single-process Dist adds per epoch: the loop's four reductions and one gather."""
    dist, n = Dist(), 20_000
    start = time.perf_counter()
    for _ in range(n):
        dist.sum([1.0, 2.0, 3.0, 4.0, 5.0])
        dist.max([1.0, 2.0])
        dist.sum([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        dist.max([1.0])
        dist.gather(1)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cases", nargs="*", default=list(CASES), help="which cases (default: all)")
    parser.add_argument("--ddp-knobs", action="store_true", help="measure DDP's knobs and MPI on the compute-bound case")
    parser.add_argument("--knobs", nargs="*", default=list(DDP_KNOBS), metavar="NAME",
                        help="with --ddp-knobs: which rows (default: all; a row is chosen by a word of its name)")
    parser.add_argument("--hand-written-rank", nargs=4, help=argparse.SUPPRESS)  # RANK FOLDER CASE EPOCHS
    args = parser.parse_args()
    if args.hand_written_rank:
        rank, folder, case, epochs = args.hand_written_rank
        hand_written_rank(int(rank), folder, json.loads(case), int(epochs))
        return
    env = {**os.environ, "LEANTRAIN_CACHE_DIR": tempfile.mkdtemp(prefix="leantrain-bench-")}
    if args.ddp_knobs:
        chosen = [name for name in DDP_KNOBS if any(word in name for word in args.knobs)]
        ddp_knobs(chosen, args.repeats, args.epochs, env)
        return
    rows = []
    for name in args.cases:
        rates: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
        picks: list[str] = []
        noisy = 0
        for repeat in range(args.repeats):
            for layout, (procs, threads, factor) in LAYOUTS.items():
                case = {**CASES[name], "batch_size": CASES[name]["batch_size"] * factor}
                record = run_layout(case, procs, threads, args.epochs, env)
                rates[layout].append(record["summary"]["median_samples_per_s"])
                if procs == "auto":
                    picks.append(f"{record['run']['layout']['procs']}x{record['run']['layout']['threads']}")
                noisy += any((e.get("foreign_cpu_cores") or 0) > NOISY_FOREIGN_CORES for e in record["epochs"])
            print(f"{name}: repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
        one = rates["1 proc x 1 thread"]
        efficiency = [two / (2 * single) for two, single in zip(rates["2 procs x 1 thread"], one)]
        better = [max(a, b) for a, b in zip(rates["1 proc x 2 threads, batch 2B"], rates["2 procs x 1 thread"])]
        auto_ratio = [a / b for a, b in zip(rates["procs auto"], better)]
        rows.append([name, *(median_spread(rates[layout], "{:,.0f}") for layout in LAYOUTS),
                     median_spread(efficiency, "{:.2f}"), ", ".join(dict.fromkeys(picks)),
                     median_spread(auto_ratio, "{:.2f}"), f"{noisy}/{args.repeats * len(LAYOUTS)}"])

    print(f"\nmachine: {cpu_name()} | capability {torch.backends.cpu.get_cpu_capability()} | torch {torch.__version__} | "
          f"repeats {args.repeats} | epochs {args.epochs} | Dist on one process: {dist_cost_us():.1f} µs per epoch")
    header = ["case", *(f"{layout} (samples/s)" for layout in LAYOUTS), "scaling efficiency (2 procs vs 2 x 1x1)",
              "auto picked", "auto / better equal-batch layout", "noisy runs"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def ddp_knobs(names: list[str], repeats: int, epochs: int, env: dict) -> None:
    """Each row interleaved with the others, ``repeats`` times; beside its samples/s, the CPU other processes used
    meanwhile (the parent's meter: its waited-for children count as its own)."""
    case = CASES[KNOBS_CASE]
    arms: dict[str, Callable[[], float]] = {
        "one": lambda: run_layout(case, 1, 1, epochs, env)["summary"]["median_samples_per_s"],
        CEILING: lambda: run_two_alone(case, epochs, env),
        HAND_WRITTEN: lambda: hand_written_ddp(case, epochs, env),
        **{name: _knob_arm(case, DDP_KNOBS[name], epochs, env) for name in names},
    }
    rates: dict[str, list[float]] = {arm: [] for arm in arms}
    foreign: dict[str, list[float]] = {arm: [] for arm in arms}
    load_before = os.getloadavg()[0]
    for repeat in range(repeats):
        for arm, run in arms.items():
            meter = ForeignCpuMeter()
            rates[arm].append(run())
            foreign[arm].append(meter.cores() or 0.0)
        print(f"repeat {repeat + 1}/{repeats} done", file=sys.stderr, flush=True)
    one = rates.pop("one")
    noisy = sum(f > NOISY_FOREIGN_CORES for values in foreign.values() for f in values)
    print(f"\nmachine: {cpu_name()} | capability {torch.backends.cpu.get_cpu_capability()} | torch {torch.__version__} | "
          f"{KNOBS_CASE} | repeats {repeats} | epochs {epochs} | load average before {load_before:.2f}, after "
          f"{os.getloadavg()[0]:.2f} | noisy runs {noisy}/{repeats * len(arms)} | 1 proc x 1 thread: "
          f"{median_spread(one, '{:,.0f}')} samples/s")
    print("| data-parallel settings (2 procs x 1 thread) | samples/s | scaling efficiency | other processes (cores) |"
          "\n|---|---|---|---|")
    for arm, values in rates.items():
        efficiency = [r / (2 * o) for r, o in zip(values, one)]
        print(f"| {arm} | {median_spread(values, '{:,.0f}')} | {median_spread(efficiency, '{:.2f}')} | "
              f"{median_spread(foreign[arm], '{:.2f}')} |")


def _knob_arm(case: dict, knobs: dict, epochs: int, env: dict) -> Callable[[], float]:
    return lambda: run_layout({**case, **knobs}, 2, 1, epochs, env)["summary"]["median_samples_per_s"]

if __name__ == "__main__":
    main()
