"""Model parallelism on this machine: the pipeline bubble against theory, FSDP against DDP, hybrid against pure.

Every layout trains the same model on the same global batch, launched as a user launches it
(``leantrain train --parallel pipeline --procs 2 ...``), one thread per process; layouts are interleaved and
repeated, and the run's median samples/s over epochs (first optimizer step of each process left out) is
compared. The one-process, one-thread run is the reference for the work itself.

Pipeline bubble: with K stages and M micro-batches a schedule idles (K-1)/(M+K-1) of each step. Measured
idle fraction = 1 - pipeline samples/s / (K x one-process samples/s): it also holds the send/receive time
and the slower small matmuls of micro-batches, so it is an upper bound on the bubble.

    python benchmarks/model_parallel.py [--repeats 3] [--epochs 2] [--hybrid]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from leantrain.config import RunConfig
from leantrain.experiments.report import median_spread
from leantrain.machine import cpu_name
from leantrain.train.metrics import NOISY_FOREIGN_CORES
from leantrain.train.run import execute

# Eight equal blocks: K = 2 stages get four each, so the stages are balanced and the bubble is the schedule's.
MODEL = {"model": "mlp:hidden=1024,depth=8", "data": "gpt3-sim:n=8192", "lr": 1e-3, "device": "cpu", "threads": 1}
BATCH = 256
MICROBATCHES = (1, 2, 4, 8, 16)
STAGES = 2


def run(values: dict[str, Any], procs: int, env: dict[str, str]) -> dict[str, Any]:
    if procs == 1:
        return execute(RunConfig.from_dict(values), quiet=True)
    with tempfile.TemporaryDirectory() as out:
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]
        done = subprocess.run([sys.executable, "-m", "leantrain", "train", *flags, "--procs", str(procs), "--quiet",
                               "--out", out], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.exit(f"{values.get('parallel')} on {procs} procs failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        (path,) = Path(out).glob("*.json")
        return json.loads(path.read_text())


def layouts(hybrid: bool) -> dict[str, tuple[dict[str, Any], int]]:
    """name -> (config values beyond MODEL, processes); every one trains on global batch BATCH."""
    chosen: dict[str, tuple[dict[str, Any], int]] = {"1 proc": ({"batch_size": BATCH}, 1)}
    for m in MICROBATCHES:
        schedule = "1f1b" if m >= STAGES else "gpipe"
        chosen[f"pipeline M={m} ({schedule})"] = (
            {"batch_size": BATCH, "parallel": "pipeline", "microbatches": m, "schedule_pp": schedule}, STAGES)
    chosen["ddp"] = ({"batch_size": BATCH // 2, "parallel": "ddp"}, 2)
    chosen["fsdp"] = ({"batch_size": BATCH // 2, "parallel": "fsdp"}, 2)
    if hybrid:
        chosen["dp2xpp2 M=4"] = ({"batch_size": BATCH // 2, "parallel": "dp2xpp2", "microbatches": 4,
                                  "schedule_pp": "1f1b"}, 4)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--hybrid", action="store_true", help="also dp2xpp2 (4 processes: oversubscribes 2 cores)")
    args = parser.parse_args()
    env = {**os.environ, "LEANTRAIN_CACHE_DIR": tempfile.mkdtemp(prefix="leantrain-bench-")}
    chosen = layouts(args.hybrid)
    rates: dict[str, list[float]] = {name: [] for name in chosen}
    state: dict[str, list[int]] = {name: [] for name in chosen}
    noisy = 0
    load_before = os.getloadavg()[0]
    for repeat in range(args.repeats):
        for name, (values, procs) in chosen.items():
            record = run({**MODEL, **values, "epochs": args.epochs}, procs, env)
            rates[name].append(record["summary"]["median_samples_per_s"])
            last = record["epochs"][-1]
            state[name].append(max(last.get("state_bytes_per_rank") or [last["state_bytes"]]))
            noisy += any((e.get("foreign_cpu_cores") or 0) > NOISY_FOREIGN_CORES for e in record["epochs"])
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)

    one = rates["1 proc"]
    print(f"\nmachine: {cpu_name()} | capability {torch.backends.cpu.get_cpu_capability()} | torch {torch.__version__} | "
          f"model {MODEL['model']} | global batch {BATCH} | repeats {args.repeats} | epochs {args.epochs} | "
          f"load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f} | noisy runs {noisy}/"
          f"{args.repeats * len(chosen)}")
    header = ["layout", "processes", "samples/s", "vs 1 proc", "idle fraction measured", "bubble theory",
              "state bytes per rank (max)"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, (values, procs) in chosen.items():
        ratio = [r / o for r, o in zip(rates[name], one)]
        idle = theory = "—"
        if values.get("parallel") == "pipeline":
            idle = median_spread([1 - r / STAGES for r in ratio], "{:.2f}")
            m = values["microbatches"]
            theory = f"{(STAGES - 1) / (m + STAGES - 1):.2f}"
        print(f"| {name} | {procs} | {median_spread(rates[name], '{:,.0f}')} | {median_spread(ratio, '{:.2f}×')} | "
              f"{idle} | {theory} | {statistics.median(state[name]) / 2**20:.1f} MiB |")


if __name__ == "__main__":
    main()
