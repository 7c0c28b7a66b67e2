"""``auto`` against each fixed value, side by side: is the measured choice as fast as the best fixed one?

For each model (the seed's MLP at the lean batch, a wide MLP, a CNN on an image stand-in, GPT-2 tiny) and
each variant (``auto`` and every fixed value of the knob), one real ``leantrain`` run of 3 epochs; the
figure is the training samples/s of epochs 2 and 3 (warm: no allocation or kernel selection in them). Variants
run interleaved, in rotating order, ``--repeats`` times; the table shows median [min–max], what ``auto``
chose in each repeat, the probe's one-off cost, and how many repeats other processes disturbed (> 0.15
cores). The bar: auto's median ≥ 95% of the best fixed variant's median, per model.

``auto`` probes with a fresh cache (a temporary LEANTRAIN_CACHE_DIR unless ``--keep-cache``), so its probe
runs here, under this run's conditions, and its cost is shown; later repeats reuse the cached choice
(unless the probe was disturbed: then it probes again, and the repeats show whether its choice moved).

    python benchmarks/autotune.py                              # precision: auto vs fp32, bf16, fp16
    python benchmarks/autotune.py --knob optimizer             # auto-adam vs adam, foreach-adam, fused-adam
    python benchmarks/autotune.py --repeats 1 --scale 0.05     # a quick check that it runs
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass

import torch

from leantrain import data as data_sets
from leantrain.config import RunConfig
from leantrain.experiments.report import median_spread
from leantrain.machine import cpu_capability, cpu_flags, cpu_name
from leantrain.train.metrics import NOISY_FOREIGN_CORES
from leantrain.train.run import execute


@dataclass
class Case:
    label: str
    data: str  # with {n}: the data set's size, scaled by --scale
    n: int
    model: str
    batch_size: int
    lr: float


CASES = [
    Case("seed mlp", "imagenet-sim:n={n}", 25_000, "mlp", 2048, 0.006),  # experiments/default.toml's lean case
    Case("wide mlp", "imagenet-sim:n={n}", 10_000, "mlp:hidden=2048", 512, 0.001),
    Case("cnn", "cifar10-sim:n={n}", 2_000, "cnn", 128, 0.001),
    Case("gpt2-tiny", "wikitext-sim:n_tokens={n}", 100_000, "gpt2-tiny", 32, 0.001),
]
KNOBS = {
    "precision": ("auto", ["fp32", "bf16", "fp16"], {"optimizer": "fused-adam"}),
    "optimizer": ("auto-adam", ["adam", "foreach-adam", "fused-adam"], {"precision": "fp32"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--knob", choices=sorted(KNOBS), default="precision")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="data set sizes x this (small: a quick check)")
    parser.add_argument("--models", default=",".join(c.label for c in CASES), help="comma-separated case labels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep-cache", action="store_true", help="use the user's autotune cache, not a fresh one")
    args = parser.parse_args()
    if not args.keep_cache:
        os.environ["LEANTRAIN_CACHE_DIR"] = tempfile.mkdtemp(prefix="leantrain-autotune-bench-")
    auto, fixed, others = KNOBS[args.knob]
    variants = [auto, *fixed]
    wanted = args.models.split(",")
    cases = [c for c in CASES if c.label in wanted]
    if not cases:
        sys.exit(f"no case among {args.models!r}; cases: {', '.join(c.label for c in CASES)}")

    rows, verdicts = [], []
    for case in cases:
        spec = case.data.format(n=max(64, int(case.n * args.scale)))
        dataset = data_sets.load(spec, seed=0)
        base = RunConfig(model=case.model, data=spec, epochs=3, batch_size=case.batch_size, lr=case.lr,
                         device=args.device, **others)
        rates: dict[str, list[float]] = {v: [] for v in variants}
        noisy = dict.fromkeys(variants, 0)
        chosen: list[str] = []
        probe_s: list[float] = []
        for repeat in range(args.repeats):
            order = variants[repeat % len(variants):] + variants[:repeat % len(variants)]
            for variant in order:
                record = execute(base.replace(**{args.knob: variant}), dataset=dataset, quiet=True)
                warm = record["epochs"][1:]
                rates[variant].append(sum(e["train_samples"] for e in warm) / sum(e["time_s"] for e in warm))
                noisy[variant] += any((e.get("foreign_cpu_cores") or 0) > NOISY_FOREIGN_CORES for e in record["epochs"])
                if variant == auto:
                    entry = record["run"]["autotune"][args.knob]
                    chosen.append(str(entry["choice"]))
                    if entry.get("source") == "measured":
                        probe_s.append(entry["probe_s"])
            print(f"{case.label}: repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
        medians = {v: statistics.median(r) for v, r in rates.items()}
        best = max(fixed, key=medians.__getitem__)
        ratio = medians[auto] / medians[best]
        picks = ", ".join(f"{c} x{chosen.count(c)}" for c in dict.fromkeys(chosen))
        for variant in variants:
            rows.append([
                case.label, str(case.batch_size), variant, median_spread(rates[variant], "{:,.0f}"),
                f"{medians[variant] / medians[best]:.2f}",
                picks if variant == auto else "",
                median_spread(probe_s, "{:.2f}") if variant == auto and probe_s else "",
                f"{noisy[variant]}/{args.repeats}",
            ])
        verdicts.append(f"{case.label}: auto / best fixed ({best}) = {ratio:.3f} -> "
                        f"{'ok' if ratio >= 0.95 else 'BELOW the 0.95 bar'}")

    flags = " ".join(cpu_flags()) or "none"
    print(f"\nmachine: {cpu_name()} | capability {cpu_capability()} | flags {flags} | threads "
          f"{torch.get_num_threads()} | torch {torch.__version__} | device {args.device} | knob {args.knob} | "
          f"repeats {args.repeats} | scale {args.scale}")
    header = ["model", "batch", args.knob, "train samples/s (epochs 2-3)", "vs best fixed", "auto chose",
              "probe s (once)", "noisy repeats"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    for verdict in verdicts:
        print(verdict)


if __name__ == "__main__":
    main()
