"""Inference throughput over a file of polynomial lines: seed 004's per-sample uncached loop vs our batched
greedy decoding, uncached and cached. Outputs are asserted identical before anything is timed.

- per-sample uncached (the seed's loop): one line at a time; each step re-runs the model on the prefix,
  stopping at EOS. Slow, so it runs on the first ``--per-sample-n`` lines and its rate is lines/s over those.
- batched uncached: ``--batch-size`` lines at a time, the prefix recomputed each step (``--decode-cache off``).
- batched cached: the encoder once, the LSTM state / transformer key-value cache carried (``predict``'s default).
Batched decodes group lines by length and stop once every line of the batch has ended. Variants run interleaved, ``--repeats`` times; the
table shows the median lines/s [min-max], the speedup against the per-sample loop, and the CPU other processes
used (runs above ~0.15 cores are marked: a shared machine is not a measurement).

    python benchmarks/decode.py --shipped                                             # the model leantrain ships
    python benchmarks/decode.py --model results/seed004-accuracy/<run>.model.pt     # a trained model
    python benchmarks/decode.py --spec seq2seq --n 2000                               # untrained: every line 30 steps
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from leantrain import data, models
from leantrain.data.polynomial import BOS, EOS, PAD
from leantrain.experiments.report import NOISY_CPU_CORES, median_spread
from leantrain.inference.lines import LineDecoder
from leantrain.inference.model_file import SavedModel, load_model
from leantrain.inference.shipped import shipped_model
from leantrain.models.decoding import greedy_by_recompute
from leantrain.train.metrics import ForeignCpuMeter

REAL = Path(__file__).parents[1] / ".." / "shared" / "data" / "polynomial" / "real-val-100k.txt"


def per_sample_loop(decoder: LineDecoder, sources: list[str]) -> list[str]:
    """The seed's inference: a Python loop over lines, each decoded alone without any cache."""
    model, out = decoder.saved.model, []
    with torch.inference_mode():
        for text in sources:
            src = decoder.tokenizer.encode([text], decoder.max_source)
            tokens = greedy_by_recompute(lambda s, p: model(s, p), src, torch.tensor([BOS]), decoder.max_target + 1,
                                         pad_index=PAD, eos_index=EOS, early_exit=True)
            out.append(decoder.tokenizer.decode(tokens[0]))
    return out


def untrained(spec: str) -> SavedModel:
    torch.manual_seed(0)
    lines = data.load("polynomial:n=20")
    return SavedModel(models.build(spec, lines).eval(), spec, "polynomial:n=20", "seq2seq", lines.info, None, Path(spec))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a *.model.pt (default: an untrained --spec model)")
    parser.add_argument("--shipped", action="store_true", help="the polynomial model leantrain ships")
    parser.add_argument("--spec", default="seq2seq", help="model spec when no --model (default: the seed's LSTM size)")
    parser.add_argument("--lines", type=Path, default=REAL, help="factored=expanded lines (default: the 100k real lines)")
    parser.add_argument("--n", type=int, default=5000, help="lines for the batched variants")
    parser.add_argument("--per-sample-n", type=int, default=200, help="lines for the per-sample loop")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_file = shipped_model() if args.shipped else args.model
    saved = load_model(model_file) if model_file else untrained(args.spec)
    sources = [line.partition("=")[0] for line in args.lines.read_text().splitlines()[: args.n] if line.strip()]
    cached = LineDecoder(saved, cache=True, batch_size=args.batch_size)
    uncached = LineDecoder(saved, cache=False, batch_size=args.batch_size)

    reference = cached.predict(sources)
    assert uncached.predict(sources) == reference, "batched uncached decoding differs from cached"
    assert per_sample_loop(cached, sources[: args.per_sample_n]) == reference[: args.per_sample_n], \
        "the per-sample loop differs from batched cached decoding"

    variants: list[tuple[str, Callable[[], object], int]] = [
        ("per-sample uncached (seed)", lambda: per_sample_loop(cached, sources[: args.per_sample_n]), args.per_sample_n),
        ("batched uncached", lambda: uncached.predict(sources), len(sources)),
        ("batched cached", lambda: cached.predict(sources), len(sources)),
    ]
    rates: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    foreign: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for _ in range(args.repeats):
        for name, run, count in variants:
            meter = ForeignCpuMeter()
            start = time.perf_counter()
            run()
            rates[name].append(count / (time.perf_counter() - start))
            foreign[name].append(meter.cores() or 0.0)

    base = statistics.median(rates[variants[0][0]])
    print(f"\nmodel {saved.model_spec} ({sum(p.numel() for p in saved.model.parameters()):,} parameters), "
          f"{len(sources):,} lines of {args.lines.name}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}; outputs identical in all three.\n")
    print("| decoding | lines | lines/s | speedup vs per-sample | other processes' CPU (cores) |")
    print("|---|---|---|---|---|")
    for name, _, count in variants:
        noisy = " (noisy)" if max(foreign[name]) > NOISY_CPU_CORES else ""
        print(f"| {name} | {count:,} | {median_spread(rates[name], '{:,.1f}')} | "
              f"{statistics.median(rates[name]) / base:.1f}× | {max(foreign[name]):.2f}{noisy} |")


if __name__ == "__main__":
    main()
