"""What ``--trim-padding`` buys a seq2seq model: training samples/s with each batch trimmed to its longest row, against
the same batches at the data set's padded width.

Both arms are leantrain runs (``execute``) of the seed-004 recipe's model on the same generated lines held in memory,
one epoch each, interleaved (the arms' order alternates per repeat), repeated; each arm's figure is the record's
``samples_per_s`` (its first step left out), as median [min-max] over repeats, with the CPU other processes used
meanwhile (``foreign_cpu_cores``: a median above 0.15 cores marks the figures noisy). The speed-up is also given
paired: each repeat's trimmed rate over the padded one of the same repeat, a few seconds apart (a host whose speed
drifts between repeats blurs these less), and the record's ``padding_trimmed`` (the share of padded positions cut).

    python benchmarks/trim_padding.py [--model seq2seq-transformer:...] [--data polynomial:n=3200]
                                      [--batch 64] [--threads 2] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch

from leantrain.config import RunConfig
from leantrain.data import load
from leantrain.data.batches import padded_lengths
from leantrain.machine import cpu_name
from leantrain.train.metrics import NOISY_FOREIGN_CORES
from leantrain.train.run import execute

RECIPE_MODEL = "seq2seq-transformer:d_model=128,heads=4,encoder_layers=3,decoder_layers=3,ff=512"
ARMS = {"padded width": False, "--trim-padding": True}


def run(data, spec: str, model: str, batch: int, threads: int, trim: bool) -> dict:
    config = RunConfig(model=model, data=spec, epochs=1, batch_size=batch, threads=threads, device="cpu",
                       trim_padding=trim, memory_check=False).validated()
    return execute(config, dataset=data, quiet=True)["epochs"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=RECIPE_MODEL)
    parser.add_argument("--data", default="polynomial:n=3200,val_fraction=0.0625")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load(args.data)
    pad = int(data.info["pad_index"])
    width = data.x_train.shape[1] + data.y_train.shape[1]
    used = float((padded_lengths(data.x_train, pad) + padded_lengths(data.y_train, pad)).float().mean())
    rates: dict[str, list[float]] = {arm: [] for arm in ARMS}
    foreign: dict[str, list[float]] = {arm: [] for arm in ARMS}
    load_before, trimmed = os.getloadavg()[0], 0.0
    run(data, args.data, args.model, args.batch, args.threads, False)  # untimed: first-call kernel selection
    for repeat in range(args.repeats):
        for arm in (list(ARMS) if repeat % 2 == 0 else list(reversed(ARMS))):
            record = run(data, args.data, args.model, args.batch, args.threads, ARMS[arm])
            rates[arm].append(record["samples_per_s"])
            foreign[arm].append(record["foreign_cpu_cores"] or 0.0)
            trimmed = record.get("padding_trimmed", trimmed)
    print(f"# {cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, {args.threads} "
          f"thread(s), {args.model}, {args.data} (mean {used:.1f} of {width} token positions a sample are not "
          f"padding), batch {args.batch}, {args.repeats} repeats, load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")
    print("| batches | samples/s, median [min-max] | × padded width | foreign CPU (cores, median) |\n|---|---|---|---|")
    base = statistics.median(rates["padded width"])
    for arm, values in rates.items():
        median, noisy = statistics.median(values), statistics.median(foreign[arm]) > NOISY_FOREIGN_CORES
        print(f"| {arm} | {median:,.0f} [{min(values):,.0f}–{max(values):,.0f}] | {median / base:.2f}× | "
              f"{statistics.median(foreign[arm]):.2f}{' (noisy)' if noisy else ''} |")
    paired = [t / p for t, p in zip(rates["--trim-padding"], rates["padded width"])]
    print(f"\npaired (each repeat's trimmed over padded): {statistics.median(paired):.2f}× [{min(paired):.2f}–"
          f"{max(paired):.2f}]; padding_trimmed {trimmed:.3f} of the padded positions")


if __name__ == "__main__":
    main()
