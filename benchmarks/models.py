"""Training throughput and utilisation of every model in the zoo, fp32 and bf16 autocast side by side.

Each measurement is one epoch of leantrain's own loop (``execute``: the same model preparation, step,
techniques and metrics a user's run has) over ``--steps`` batches of random data of each model's kind,
AdamW; the rate is the record's samples/s (tokens/s), which leaves out the epoch's first step (warm-up).
fp32 and bf16 (``--precision bf16``) are measured interleaved (fp32, bf16, fp32, ...) in one process,
``--repeats`` times; the table shows the median rate and its [min-max]. Utilisation = 3 x forward FLOPs per unit x units/s over the
machine's measured matmul peak for that dtype (``peak_matmul_flops``); the unit is a token for sequence
models (GPT-2, seq2seq), a sample otherwise. Measurements during which other processes used more than
0.15 CPU cores are repeated (``--retries``) and, if still polluted, flagged. A second table compares
seq2seq greedy decoding with the (h, c) state carried (cached) against re-running the decoder over the
whole prefix each step. The matmul peak is measured afresh before each model (best kept) unless ``--cached-peak``.

    python benchmarks/models.py                  # CPU, small configs (~1 min)
    python benchmarks/models.py --device cuda    # adds full-size GPT-2 small (124M) at 1024 tokens: MFU
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from dataclasses import dataclass

import torch

from leantrain import models
from leantrain.config import RunConfig
from leantrain.data.dataset import Dataset
from leantrain.experiments.report import NOISY_CPU_CORES, median_spread
from leantrain.tasks import get_task
from leantrain.train.metrics import ForeignCpuMeter, now, peak_matmul_flops, training_utilisation
from leantrain.train.run import execute


@dataclass
class Case:
    label: str
    spec: str
    kind: str  # data kind, see make_batch
    shape: tuple[int, ...]  # (batch, ...) of the input
    classes_or_vocab: int


CPU_CASES = [
    Case("mlp", "mlp", "flat", (256, 128), 5),
    Case("cnn", "cnn", "image", (64, 3, 32, 32), 10),
    Case("vgg11 w16", "vgg11:width=16,hidden=128", "image", (32, 3, 32, 32), 10),
    Case("vgg11-bn w16", "vgg11:width=16,hidden=128,batch_norm=true", "image", (32, 3, 32, 32), 10),
    Case("resnet18 w16", "resnet18:width=16", "image", (32, 3, 32, 32), 10),
    Case("resnet50 w16 64px", "resnet50:width=16", "image", (16, 3, 64, 64), 10),
    Case("nbow", "nbow", "text", (64, 256), 5000),
    Case("conv-autoencoder", "conv-autoencoder", "reconstruction", (64, 1, 28, 28), 0),
    Case("gpt2-tiny L128", "gpt2-tiny", "language-model", (16, 128), 1024),
    Case("gpt2 4L-256d L128", "gpt2:n_layer=4,n_head=4,n_embd=256", "language-model", (8, 128), 8192),
    Case("seq2seq h64", "seq2seq:emb=32,hidden=64", "seq2seq", (64, 16), 32),
]
CUDA_CASES = [
    Case("gpt2 small 124M L1024", "gpt2", "language-model", (8, 1024), 50257),
    Case("resnet50 224px", "resnet50", "image", (64, 3, 224, 224), 1000),
]


def make_data(case: Case, device: torch.device, steps: int = 1) -> Dataset:
    """One batch of the case's kind for validation, and ``steps`` fresh batches of it for training."""
    n, *rest = case.shape
    g = torch.Generator().manual_seed(0)
    m = n * steps
    if case.kind in ("flat", "image"):
        x, y = torch.randn(m, *rest, generator=g), torch.randint(0, case.classes_or_vocab, (m,), generator=g)
        return Dataset(case.label, x, y, x[:n], y[:n], num_classes=case.classes_or_vocab).to(device)
    if case.kind == "reconstruction":
        x = torch.rand(m, *rest, generator=g)
        return Dataset(case.label, x, x, x[:n], x[:n], task="reconstruction").to(device)
    vocab = case.classes_or_vocab
    x = torch.randint(3, vocab, (m, *rest), generator=g)
    if case.kind == "text":
        y = torch.randint(0, 2, (m,), generator=g)
        return Dataset(case.label, x, y, x[:n], y[:n], num_classes=2, info={"vocab_size": vocab, "pad_index": 0}).to(device)
    if case.kind == "language-model":
        y = torch.randint(0, vocab, (m, *rest), generator=g)
        return Dataset(case.label, x, y, x[:n], y[:n], task="language-model", info={"vocab_size": vocab}).to(device)
    y = torch.cat([torch.ones(m, 1, dtype=torch.long), x.flip(1), torch.full((m, 1), 2)], dim=1)  # BOS rev EOS
    info = {"vocab_size": vocab, "pad_index": 0, "bos_index": 1, "eos_index": 2, "max_target_len": y.shape[1]}
    return Dataset(case.label, x, y, x[:n], y[:n], task="seq2seq", info=info).to(device)


def measure(model, data, device, precision: str, batch: int) -> tuple[float, float | None, float | None]:
    """(samples/s, tokens/s or None, foreign CPU cores) of one epoch of leantrain's loop over ``data``."""
    config = RunConfig.from_dict({"epochs": 1, "batch_size": batch, "eval_batch_size": batch, "optimizer": "adamw",
                                  "lr": 1e-4, "device": device.type, "precision": precision, "seed": 0})
    epoch = execute(config, model=model, dataset=data, quiet=True)["epochs"][0]
    return epoch["samples_per_s"], epoch.get("train_tokens_per_s"), epoch.get("foreign_cpu_cores")


@torch.no_grad()
def decode_rates(device: torch.device, repeats: int) -> list[list[str]]:
    """Seq2seq greedy decode tokens/s: (h, c) carried vs the whole prefix re-run each step."""
    case = Case("seq2seq", "seq2seq:emb=32,hidden=64", "seq2seq", (256, 16), 32)
    data = make_data(case, device)
    model = models.build(case.spec, data).to(device).eval()
    steps = data.y_train.shape[1] - 1
    src = data.x_val

    def cached() -> None:
        model.generate(src, steps=steps)

    def recompute() -> None:
        prefix = torch.ones(len(src), 1, dtype=torch.long, device=device)
        for _ in range(steps):
            prefix = torch.cat([prefix, model(src, prefix)[:, -1].argmax(-1, keepdim=True)], dim=1)

    times: dict[str, list[float]] = {"cached (h, c) carried": [], "prefix recomputed": []}
    for _ in range(repeats):
        for name, fn in (("cached (h, c) carried", cached), ("prefix recomputed", recompute)):
            fn()
            start = now(device)
            fn()
            times[name].append(now(device) - start)
    tokens = len(src) * steps
    base = statistics.median(times["prefix recomputed"])
    return [
        [name, f"{tokens / statistics.median(t):,.0f}", f"{base / statistics.median(t):.1f}x"]
        for name, t in times.items()
    ]


class Peaks:
    """The matmul peak per dtype, the best of every measurement in this run.

    Fresh (the default): measured now, and again before each model, because a figure measured while a
    neighbour was busy (cached, or measured at a bad moment) is too low and would inflate every
    utilisation; contention only ever lowers a peak, so the maximum is the honest estimate."""

    def __init__(self, device: torch.device, dtypes: dict[str, torch.dtype], fresh: bool):
        self.device, self.dtypes, self.fresh = device, dtypes, fresh
        self.best: dict[str, float] = {}
        self.foreign: list[float] = []  # other processes' CPU during each measurement

    def measure(self) -> None:
        if self.best and not self.fresh:
            return
        if self.fresh:
            os.environ["LEANTRAIN_CACHE_DIR"] = tempfile.mkdtemp(prefix="leantrain-bench-")
        meter = ForeignCpuMeter()
        for name, dtype in self.dtypes.items():
            self.best[name] = max(self.best.get(name, 0.0), peak_matmul_flops(self.device, dtype))
        self.foreign.append(meter.cores() or 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="training steps per measurement (the first is warm-up)")
    parser.add_argument("--only", default="", help="comma-separated labels (substring match) to run")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for PyTorch (0: its default)")
    parser.add_argument("--retries", type=int, default=3, help="re-measure up to N times while others use the CPU")
    parser.add_argument(
        "--cached-peak", action="store_true",
        help="use the peak FLOP/s cached by earlier runs (default: measure it now, in the conditions of this run)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = CPU_CASES + (CUDA_CASES if device.type == "cuda" else [])
    if args.only:
        cases = [c for c in cases if any(part in c.label for part in args.only.split(","))]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}  # precision name -> the dtype whose peak it uses
    peaks = Peaks(device, dtypes, fresh=not args.cached_peak)

    rates = []
    for case in cases:
        peaks.measure()
        torch.manual_seed(0)
        data = make_data(case, device, args.steps)
        model = models.build(case.spec, data).to(device)
        task = get_task(data.task)
        flops = models.flops_per_sample(model)
        params = sum(p.numel() for p in model.parameters())
        results: dict[str, dict[str, list[float]]] = {k: {"samples": [], "tokens": [], "foreign": []} for k in dtypes}
        for _ in range(args.repeats):
            for name in dtypes:
                for _ in range(args.retries + 1):  # a measurement shared with a busy neighbour is repeated
                    samples, tokens, foreign = measure(model, data, device, name, case.shape[0])
                    if (foreign or 0.0) <= NOISY_CPU_CORES:
                        break
                results[name]["samples"].append(samples)
                results[name]["tokens"].append(tokens or 0.0)
                results[name]["foreign"].append(foreign or 0.0)
        rates.append((case, params, flops, task.tokens(data.y_train) is not None, results))
        print(f"done: {case.label}", flush=True)
    peaks.measure()

    rows = []  # utilisation only now, over the best peak of the whole run
    for case, params, flops, per_token, results in rates:
        row = [case.label, f"{params / 1e6:.2f}M", f"{flops / 1e6:.3g}", "token" if per_token else "sample"]
        for name in dtypes:
            r = results[name]
            rate = statistics.median(r["tokens"] if per_token else r["samples"])
            utilisation = training_utilisation(flops, rate, peaks.best[name])
            noisy = sum(f > NOISY_CPU_CORES for f in r["foreign"])
            row += [median_spread(r["samples"], "{:,.0f}"), median_spread(r["tokens"], "{:,.0f}") if per_token else "-",
                    f"{100 * utilisation:.1f}%", f"{max(r['foreign']):.2f}" + (f" ({noisy} noisy)" if noisy else "")]
        rows.append(row)

    decode = decode_rates(device, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\ndevice {name} | capability {torch.backends.cpu.get_cpu_capability()} | threads {torch.get_num_threads()} | "
          f"torch {torch.__version__} | repeats {args.repeats} x {args.steps} steps\n"
          f"matmul peak (best of {len(peaks.foreign)}): fp32 {peaks.best['fp32'] / 1e9:,.0f} GFLOP/s, "
          f"bf16 {peaks.best['bf16'] / 1e9:,.0f} GFLOP/s; foreign CPU while measuring it: "
          f"{min(peaks.foreign):.2f}-{max(peaks.foreign):.2f} cores")
    print("\nseq2seq greedy decode (batch 256, 17 steps), tokens/s:\n")
    print("| decode | tokens/s | speedup |\n|---|---|---|")
    for r in decode:
        print("| " + " | ".join(r) + " |")
    header = ["model", "params", "fwd MFLOP/unit", "unit"]
    for dt in dtypes:
        header += [f"{dt} samples/s", f"{dt} tokens/s", f"{dt} util", f"{dt} foreign CPU"]
    print("\ntraining steps, median [min-max] over repeats:\n")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
