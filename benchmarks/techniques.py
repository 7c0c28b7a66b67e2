"""Per technique: training speed and memory against the fp32 baseline, side by side in one process.

Every variant trains the same model on the same batches for one short epoch through ``leantrain.fit``;
variants are interleaved and the whole round repeated, so slow drift of the machine hits all alike.
Throughput leaves out each run's first step (the loop does). Memory on CPU is the loop's account:
activation bytes (saved-tensor meter, counting checkpoint recomputation) plus parameters, gradients
and optimizer state. Other processes' CPU use is recorded per run; a run where it exceeded 0.15 cores
is marked polluted and left out of the median when clean runs exist.

    .venv/bin/python benchmarks/techniques.py            # ~1-3 minutes on 2 cores (longer when the machine is shared)
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Mapping

import torch

import leantrain
from leantrain import data as data_sets
from leantrain import models
from leantrain.machine import cpu_name
from leantrain.techniques import (
    ActivationCheckpointing,
    AdaptiveAccumulation,
    Compile,
    GradClip,
    MixedPrecision,
    WarmupCosine,
)
from leantrain.train.metrics import ForeignCpuMeter

POLLUTED_CORES = 0.15


def variants(with_compile: bool) -> dict[str, callable]:
    table = {
        "baseline fp32": lambda: [],
        "bf16": lambda: [MixedPrecision("bf16")],
        "fp16 + loss scaling": lambda: [MixedPrecision("fp16")],
        "grad clip 1.0": lambda: [GradClip(1.0)],
        # The MLP's 16 blocks in an nn.Sequential: √16 = 4 segments of 4 (benchmarks/checkpointing.py: all settings).
        "checkpointing sqrt (√L segments)": lambda: [ActivationCheckpointing("sqrt")],
        "adaptive accumulation": lambda: [AdaptiveAccumulation(k_min=2, k_max=8)],
        "warmup-cosine": lambda: [WarmupCosine()],
        "all (bf16+ckpt+accum+sched+clip)": lambda: [
            MixedPrecision("bf16"), ActivationCheckpointing("sqrt"), AdaptiveAccumulation(k_min=2, k_max=8),
            WarmupCosine(), GradClip(1.0),
        ],
    }
    if with_compile:
        table["compile"] = lambda: [Compile()]
    return table


def run_once(model_spec: str, dataset, techniques, batch_size: int) -> dict:
    torch.manual_seed(0)
    model = models.build(model_spec, dataset)
    record = leantrain.fit(model, dataset, epochs=1, batch_size=batch_size, device="cpu", techniques=techniques)
    epoch = record["epochs"][0]
    return {
        "samples_per_s": epoch["samples_per_s"],
        "activation_bytes": epoch["activation_bytes"],
        "peak_mem_bytes": epoch["peak_mem_bytes"],
        "foreign": epoch["foreign_cpu_cores"] or 0.0,
        "val_loss": epoch["val_loss"],
    }


def interleaved(runs: Mapping[str, Callable[[], dict]], repeats: int, warmup: Callable[[], object]) -> list[dict[str, dict]]:
    """``warmup`` once (allocator, kernels, peak-FLOPs cache), then ``repeats`` rounds, each running every one of
    ``runs`` once, in turn, so that slow drift of the machine hits all alike: [{name: its run}] (also used by
    benchmarks/checkpointing.py)."""
    warmup()
    return [{name: run() for name, run in runs.items()} for _ in range(repeats)]


def measure(model_spec: str, data_spec: str, batch_size: int, repeats: int, table: dict) -> dict[str, list[dict]]:
    dataset = data_sets.load(data_spec)
    rounds = interleaved({name: lambda make=make: run_once(model_spec, dataset, make(), batch_size)
                          for name, make in table.items()}, repeats,
                         warmup=lambda: run_once(model_spec, dataset, [], batch_size))
    results = {name: [r[name] for r in rounds] for name in table}
    for name, runs in results.items():  # re-measure polluted runs once, if time allows
        for i, run in enumerate(runs):
            if run["foreign"] > POLLUTED_CORES:
                retry = run_once(model_spec, dataset, table[name](), batch_size)
                if retry["foreign"] <= POLLUTED_CORES:
                    runs[i] = retry
    return results


def summarize(results: dict[str, list[dict]], baseline: str) -> list[list[str]]:
    def clean(runs):
        good = [r for r in runs if r["foreign"] <= POLLUTED_CORES]
        return good or runs

    base = clean(results[baseline])
    base_rate = statistics.median(r["samples_per_s"] for r in base)
    base_mem = statistics.median(r["peak_mem_bytes"] for r in base)
    base_act = statistics.median(r["activation_bytes"] for r in base)
    rows = []
    for name, runs in results.items():
        used = clean(runs)
        # Time per sample relative to the baseline: >1 is slower.
        ratios = sorted(base_rate / r["samples_per_s"] for r in used)
        rate = statistics.median(r["samples_per_s"] for r in used)
        act = statistics.median(r["activation_bytes"] for r in used)
        mem = statistics.median(r["peak_mem_bytes"] for r in used)
        polluted = sum(r["foreign"] > POLLUTED_CORES for r in runs)
        rows.append([
            name, f"{statistics.median(ratios):.2f} [{ratios[0]:.2f}-{ratios[-1]:.2f}]", f"{rate:,.0f}",
            f"{act / 2**20:.2f} ({act / base_act:.2f}x)", f"{mem / 2**20:.1f} ({mem / base_mem:.2f}x)",
            f"{statistics.median(r['val_loss'] for r in used):.3f}",
            f"{polluted}/{len(runs)}" + (" POLLUTED" if polluted == len(runs) else ""),
        ])
    return rows


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(x).ljust(w) for x, w in zip(row, widths)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="mlp:hidden=256,depth=16")
    parser.add_argument("--data", default="imagenet-sim:n=12800")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile)")
    args = parser.parse_args()

    start, foreign = time.perf_counter(), ForeignCpuMeter()
    header = ["technique", "time/sample vs fp32 (median [min-max])", "samples/s", "activation MiB", "peak mem MiB",
              "val loss", "polluted"]
    main_rows = summarize(measure(args.model, args.data, args.batch_size, args.repeats, variants(args.compile)),
                          "baseline fp32")
    matmul_model = "mlp:hidden=1024,depth=4"
    amx = {"baseline fp32": lambda: [], "bf16": lambda: [MixedPrecision("bf16")]}
    amx_rows = summarize(measure(matmul_model, args.data, args.batch_size, args.repeats, amx), "baseline fp32")
    flags = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
    has_amx = "amx_bf16" in flags
    print(f"\nmachine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"AMX-bf16 {'yes' if has_amx else 'no'}, avx512_bf16 {'yes' if 'avx512_bf16' in flags else 'no'}")
    print(f"command: .venv/bin/python benchmarks/techniques.py --repeats {args.repeats}"
          + (" --compile" if args.compile else "") + f"  ({time.perf_counter() - start:.0f} s, "
          f"other processes used {foreign.cores() or 0:.2f} cores on average)")
    print_table(f"bf16 vs fp32 on a matmul-heavy model ({matmul_model}, {args.data}, batch {args.batch_size})",
                header, amx_rows)
    print_table(f"Techniques vs fp32 baseline ({args.model}, {args.data}, batch {args.batch_size}, "
                f"{args.repeats} interleaved repeats, one epoch each)", header, main_rows)


if __name__ == "__main__":
    main()
