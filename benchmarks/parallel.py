"""Threads or processes? 1 process x 1 thread, 1 process x 2 threads and 2 DDP processes x 1 thread, side by side,
and what ``--procs auto`` picks; with ``--ddp-knobs``, DDP's bucket size, static graph, gradient-as-bucket-view and
fp16 all-reduce, and ``--parallel mpi`` with and without ``--shard-optimizer``, on the compute-bound case instead,
beside their ceiling: two independent one-thread runs at once, no communication.

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from leantrain.config import RunConfig
from leantrain.experiments.report import median_spread
from leantrain.machine import cpu_name
from leantrain.parallel.dist import Dist
from leantrain.train.metrics import NOISY_FOREIGN_CORES
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


def run_layout(case: dict, procs: int | str, threads: int | None, epochs: int, env: dict) -> dict:
    values = {**case, "epochs": epochs, "device": "cpu", **({"threads": threads} if threads else {})}
    if procs == 1:
        return execute(RunConfig.from_dict(values), quiet=True)
    values.setdefault("parallel", "ddp")
    with tempfile.TemporaryDirectory() as out:
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]
        done = subprocess.run([sys.executable, "-m", "leantrain", "train", *flags, "--procs",
                               str(procs), "--quiet", "--out", out], capture_output=True, text=True, env=env)
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
            _, err = run.communicate()
            if run.returncode != 0:
                sys.exit(f"an independent run failed (exit {run.returncode}):\n{err[-3000:]}")
        records = [json.loads(next(Path(f"{out}/{i}").glob("*.json")).read_text()) for i in range(2)]
    return sum(r["summary"]["median_samples_per_s"] for r in records)


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
    args = parser.parse_args()
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
    case = CASES[KNOBS_CASE]
    one: list[float] = []
    rates: dict[str, list[float]] = {name: [] for name in names}
    alone: list[float] = []
    noisy = 0
    load_before = os.getloadavg()[0]
    for repeat in range(repeats):
        record = run_layout(case, 1, 1, epochs, env)
        one.append(record["summary"]["median_samples_per_s"])
        alone.append(run_two_alone(case, epochs, env))
        for name in names:
            record = run_layout({**case, **DDP_KNOBS[name]}, 2, 1, epochs, env)
            rates[name].append(record["summary"]["median_samples_per_s"])
            noisy += any((e.get("foreign_cpu_cores") or 0) > NOISY_FOREIGN_CORES for e in record["epochs"])
        print(f"repeat {repeat + 1}/{repeats} done", file=sys.stderr, flush=True)
    print(f"\nmachine: {cpu_name()} | capability {torch.backends.cpu.get_cpu_capability()} | torch {torch.__version__} | "
          f"{KNOBS_CASE} | repeats {repeats} | epochs {epochs} | load average before {load_before:.2f}, after "
          f"{os.getloadavg()[0]:.2f} | noisy runs {noisy}/{repeats * len(names)} | 1 proc x 1 thread: "
          f"{median_spread(one, '{:,.0f}')} samples/s")
    print("| data-parallel settings (2 procs x 1 thread) | samples/s | scaling efficiency |\n|---|---|---|")
    ceiling = [a / (2 * o) for a, o in zip(alone, one)]
    print(f"| ceiling: 2 independent runs x 1 thread, no DDP | {median_spread(alone, '{:,.0f}')} | "
          f"{median_spread(ceiling, '{:.2f}')} |")
    for name in names:
        efficiency = [r / (2 * o) for r, o in zip(rates[name], one)]
        print(f"| {name} | {median_spread(rates[name], '{:,.0f}')} | {median_spread(efficiency, '{:.2f}')} |")


if __name__ == "__main__":
    main()
