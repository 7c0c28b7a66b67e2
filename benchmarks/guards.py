"""What the reliability guards cost per training step, on the default experiment's cases (DESIGN §5: one
process, variants interleaved and repeated, median and spread, other processes' CPU use recorded).

Variants, each against "none" (guard switched off by patching, no checkpoints):
  nonfinite      the non-finite loss/gradient check (the default, --on-nonfinite stop)
  ckpt/epoch     checkpoint at each epoch end: checksummed, fsynced (file and folder)
  ckpt/epoch raw the same without the checksum and fsync (to isolate their share)
  ckpt/200       mid-epoch checkpoints every 200 steps (--checkpoint-every 200) on top
Per-step time = training time_s / train_steps, median over epochs after the first.

    python benchmarks/guards.py [--repeats 3] [--epochs 3] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch

from leantrain import fileio
from leantrain.config import RunConfig
from leantrain.experiments.report import median_spread
from leantrain.train import checkpoint
from leantrain.train.guards import Guards
from leantrain.train.metrics import cpu_name
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


def per_step_s(case: dict, name: str, epochs: int, device: str) -> float:
    values = {"model": "mlp", **case, "epochs": epochs, "device": device}
    if name == "ckpt/200":
        values["checkpoint_every"] = "200"
    config = RunConfig.from_dict(values)
    with tempfile.TemporaryDirectory() as folder, variant(name):
        out = Path(folder) if name.startswith("ckpt") else None
        record = execute(config, out_dir=out, quiet=True, force=True)
    times = [e["time_s"] / e["train_steps"] for e in record["epochs"][1:]]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    variants = ["none", "nonfinite", "ckpt/epoch raw", "ckpt/epoch", "ckpt/200"]
    print(f"# {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    rows = []
    for label, case in CASES.items():
        samples: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.repeats):  # interleaved: machine drift hits every variant alike
            for v in variants:
                samples[v].append(per_step_s(case, v, args.epochs, args.device))
        base = statistics.median(samples["none"])
        for v in variants:
            overheads = [100 * (s / base - 1) for s in samples[v]]
            rows.append(f"| {label} | {v} | {1e3 * statistics.median(samples[v]):.3f} | "
                        f"{median_spread(overheads, '{:+.1f}')} |")
    print("| case | variant | ms/step | overhead vs none, % |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
