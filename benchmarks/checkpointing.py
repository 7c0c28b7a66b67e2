"""Activation checkpointing (issue 25, item 2): activation memory and step time of off, sqrt, full and selective on
the zoo's 16-block MLP, its transformer (GPT-2, 4 layers) and ResNet-18.

Every variant trains the same model on the same batches for one short epoch through ``leantrain.fit``; the
variants are interleaved and the whole round repeated, so slow drift of the machine hits all alike. Activation
bytes: the loop's saved-tensor meter at the epoch's first step (checkpoint recomputation and the outputs selective
checkpointing keeps counted). Step time: the epoch's training time per step, its first step left out (the loop's
rate; selective's probe runs in that first step). Time ratios are paired: each repeat's time over the same round's
``off``. Other processes' CPU use is recorded per run; a run where it exceeded 0.15 cores is marked polluted and
left out of the medians when clean runs exist.

    .venv/bin/python benchmarks/checkpointing.py                 # ~5-10 minutes on 2 cores (longer when shared)
    .venv/bin/python benchmarks/checkpointing.py --models mlp --repeats 3
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch
from techniques import interleaved, print_table  # benchmarks/techniques.py: this script's folder is on sys.path

import leantrain
from leantrain import data as data_sets
from leantrain import models
from leantrain.machine import cpu_name
from leantrain.techniques import ActivationCheckpointing
from leantrain.train.metrics import NOISY_FOREIGN_CORES, ForeignCpuMeter

CASES = {  # name -> (model spec, data spec, batch size): an epoch of 12-20 steps each
    "mlp": ("mlp:hidden=256,depth=16", "imagenet-sim:n=6400", 256),
    "gpt2": ("gpt2:n_layer=4,n_head=4,n_embd=256", "wikitext-sim:n_tokens=16000", 16),
    "resnet18": ("resnet18:width=16", "cifar10-sim:n=800", 32),
}
SETTINGS = ("off", "sqrt", "full", "selective")


def run_once(model_spec: str, dataset: data_sets.Dataset, setting: str, batch_size: int) -> dict:
    torch.manual_seed(0)
    model = models.build(model_spec, dataset)
    techniques = [] if setting == "off" else [ActivationCheckpointing(setting)]
    record = leantrain.fit(model, dataset, epochs=1, batch_size=batch_size, device="cpu", techniques=techniques)
    epoch = record["epochs"][0]
    return {
        "step_s": batch_size / epoch["samples_per_s"],
        "activation_bytes": epoch["activation_bytes"],
        "foreign": epoch["foreign_cpu_cores"] or 0.0,
        "segments": [len(s) for s in epoch.get("checkpoint_segments", [])],
    }


def measure(case: str, repeats: int) -> list[dict[str, dict]]:
    """``repeats`` rounds, each running every setting once, in turn: [{setting: run}]."""
    model_spec, data_spec, batch_size = CASES[case]
    dataset = data_sets.load(data_spec)
    return interleaved({s: functools.partial(run_once, model_spec, dataset, s, batch_size) for s in SETTINGS}, repeats,
                       warmup=functools.partial(run_once, model_spec, dataset, "off", batch_size))


def _spread(values: list[float], fmt: Callable[[float], str]) -> str:
    return f"{fmt(statistics.median(values))} [{fmt(min(values))}-{fmt(max(values))}]"


def summarize(rounds: list[dict[str, dict]]) -> list[list[str]]:
    """A row per setting: activation MiB (x off), step ms and its paired ratio to off (median [min-max]), foreign
    cores (median, max), the segments recorded."""
    quiet = [r for r in rounds if all(run["foreign"] <= NOISY_FOREIGN_CORES for run in r.values())]
    clean = quiet or rounds  # every round noisy: all of them, and the table says so
    base_act = statistics.median(r["off"]["activation_bytes"] for r in clean)
    rows = []
    for setting in SETTINGS:
        act = statistics.median(r[setting]["activation_bytes"] for r in clean)
        ratios = [r[setting]["step_s"] / r["off"]["step_s"] for r in clean]
        foreign = [r[setting]["foreign"] for r in rounds]
        rows.append([
            setting, f"{act / 2**20:.2f} ({act / base_act:.2f}x)", f"{round(act):,}",
            _spread([r[setting]["step_s"] * 1e3 for r in clean], lambda v: f"{v:.1f}"),
            _spread(ratios, lambda v: f"{v:.2f}"),
            f"{statistics.median(foreign):.2f} / {max(foreign):.2f}",
            f"{len(rounds) - len(quiet)}/{len(rounds)}" + ("" if quiet else " (all used)"),
            str(rounds[-1][setting]["segments"] or "-"),
        ])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    args = parser.parse_args()
    start, foreign = time.perf_counter(), ForeignCpuMeter()
    header = ["checkpointing", "activation MiB (x off)", "activation bytes", "step ms median [min-max]",
              "step time x off, paired", "foreign cores median / max", "noisy rounds (left out)", "segments"]
    tables = []
    for case in args.models.split(","):
        rows = summarize(measure(case, args.repeats))
        model_spec, data_spec, batch = CASES[case]
        tables.append((f"{model_spec}, {data_spec}, batch {batch}, {args.repeats} interleaved rounds", rows))
    print(f"machine: {cpu_name()}, torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
    print(f"command: .venv/bin/python benchmarks/checkpointing.py --repeats {args.repeats} --models {args.models}  "
          f"({time.perf_counter() - start:.0f} s, other processes used {foreign.cores() or 0:.2f} cores on average)")
    for title, rows in tables:
        print_table(title, header, rows)


if __name__ == "__main__":
    main()
