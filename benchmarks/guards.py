"""What the reliability guards cost per training step, on the default experiment's cases (docs/ARCHITECTURE.md, "Measuring honestly": one
process, variants interleaved and repeated, median and spread, other processes' CPU use recorded).

Variants, each against "none" (guard switched off by patching, no checkpoints):
  nonfinite      the non-finite check (the default, --on-nonfinite stop): on one CPU process the loss kept
                 each step and read every 32 steps (at most every 0.25 s), the weights before a checkpoint and at
                 the epoch's end
  nonfinite/every-step  the same with the losses read every step (what reading each step would cost)
  nonfinite/deferred  the same check the way CUDA and several ranks run it (a device flag, read every 32
                 steps), forced here: on a CPU it saves no sync, only shows what the kernels cost
  ckpt/epoch     checkpoint at each epoch end: checksummed, fsynced (file and folder)
  ckpt/epoch raw the same without the checksum and fsync (to isolate their share)
  ckpt/200       mid-epoch checkpoints every 200 steps (--checkpoint-every 200) on top
Per-step time = training time_s / train_steps, median over epochs after the first. On a loaded machine
whole steps vary by more than the guards cost, so the guard's own time is also taken around each call of
``Guards.before_optimizer_step`` (median over the run's steps; "check us"), which the load disturbs far less.

    python benchmarks/guards.py [--repeats 3] [--epochs 3] [--device cpu|cuda] [--threads N] [--cases healthcare]
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch

from leantrain import fileio
from leantrain.config import RunConfig
from leantrain.experiments.report import median_spread
from leantrain.machine import cpu_name
from leantrain.train import checkpoint, guards
from leantrain.train.guards import Guards, NonFiniteGuard
from leantrain.train.run import execute

CASES = {  # experiments/default.toml: the baseline recipe (batch 64) and the lean recipe's batch per data set
    "imagenet-sim b64": {"data": "imagenet-sim", "batch_size": 64, "lr": 1e-3},
    "imagenet-sim b2048": {"data": "imagenet-sim", "batch_size": 2048, "lr": 6e-3, "precision": "bf16"},
    "healthcare-sim b64": {"data": "healthcare-sim", "batch_size": 64, "lr": 1e-3},
}


@contextmanager
def variant(name: str) -> Iterator[None]:
    patches = []
    if name == "none":
        patches.append(mock.patch.object(Guards, "before_optimizer_step", lambda self, state, loss: False))
    if name in ("nonfinite/deferred", "nonfinite/every-step"):
        init = NonFiniteGuard.__init__

        def patched(self: NonFiniteGuard, *args: object, **kwargs: object) -> None:
            init(self, *args, **kwargs)
            if name == "nonfinite/deferred":
                self.loss_on_host = False
            else:
                self.check_every = 1
        patches.append(mock.patch.object(NonFiniteGuard, "__init__", patched))
        if name == "nonfinite/every-step":
            patches.append(mock.patch.object(guards, "MIN_READ_INTERVAL_S", 0.0))  # not spaced by time
    if name == "ckpt/epoch raw":
        patches += [mock.patch.object(fileio, "_fsync_file", lambda path: None),
                    mock.patch.object(fileio, "fsync_dir", lambda folder: None),
                    mock.patch.object(checkpoint.hashlib, "sha256", lambda data: hashlib.md5(b""))]
    for p in patches:
        p.start()
    try:
        yield
    finally:
        for p in patches:
            p.stop()


def per_step_s(case: dict, name: str, epochs: int, device: str) -> tuple[float, float | None]:
    """(seconds per step, the guard call's median seconds or None when it is switched off)."""
    values = {"model": "mlp", **case, "epochs": epochs, "device": device, "threads": torch.get_num_threads()}
    if name == "ckpt/200":
        values["checkpoint_every"] = "200"
    config = RunConfig.from_dict(values)
    spent: list[float] = []
    with tempfile.TemporaryDirectory() as folder, variant(name):
        call = Guards.before_optimizer_step

        def timed(self: Guards, state: object, loss: torch.Tensor) -> bool:
            start = time.perf_counter()
            skip = call(self, state, loss)
            spent.append(time.perf_counter() - start)
            return skip

        with mock.patch.object(Guards, "before_optimizer_step", timed):
            out = Path(folder) if name.startswith("ckpt") else None
            record = execute(config, out_dir=out, quiet=True, force=True)
    times = [e["time_s"] / e["train_steps"] for e in record["epochs"][1:]]
    return statistics.median(times), statistics.median(spent) if spent and name != "none" else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    parser.add_argument("--cases", default="", help="only the cases whose label contains this text")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = ["none", "nonfinite", "nonfinite/every-step", "nonfinite/deferred", "ckpt/epoch raw", "ckpt/epoch",
                "ckpt/200"]
    print(f"# {cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}")
    rows = []
    for label, case in CASES.items():
        if args.cases not in label:
            continue
        samples: dict[str, list[float]] = {v: [] for v in variants}
        guard_s: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.repeats):  # interleaved: machine drift hits every variant alike
            for v in variants:
                step_s, call_s = per_step_s(case, v, args.epochs, args.device)
                samples[v].append(step_s)
                if call_s is not None:
                    guard_s[v].append(call_s)
        base = statistics.median(samples["none"])
        for v in variants:
            overheads = [100 * (s / base - 1) for s in samples[v]]
            check = (f"{1e6 * statistics.median(guard_s[v]):.1f} ({100 * statistics.median(guard_s[v]) / min(samples['none']):.1f}%)"
                     if guard_s[v] else "-")
            rows.append(f"| {label} | {v} | {1e3 * statistics.median(samples[v]):.3f} | "
                        f"{median_spread(overheads, '{:+.1f}')} | {check} |")
    print("| case | variant | ms/step | overhead vs none, % | check us (of the fastest none step) |\n"
          "|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
