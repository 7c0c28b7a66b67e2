"""Where leantrain's loop spends its time beyond a plain PyTorch loop, per step (issue 15).

The seed's recipe (MLP, DataLoader batch 64, Adam 1e-3, fp32) trained by a hand-written loop and by leantrain,
and leantrain again with one piece switched off by patching: the non-finite guard, the training-accuracy count.
Interleaved, repeated; per-step time = median over epochs after the first, then median over repeats.

    python benchmarks/framework_cost.py [--threads 1] [--repeats 3] [--data imagenet-sim:n=20000]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from unittest import mock

import torch
from torch import nn

from leantrain import tasks
from leantrain.config import RunConfig
from leantrain.data import load
from leantrain.machine import cpu_name
from leantrain.models import build
from leantrain.train.guards import Guards
from leantrain.train.run import execute

COUNT = tasks.Classification.correct


def plain(data_spec: str, epochs: int = 3) -> float:
    data = load(data_spec)
    torch.manual_seed(0)
    model = build("mlp", data)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.x_train, data.y_train), batch_size=64,
                                         shuffle=True)
    loss_fn = nn.CrossEntropyLoss()
    per_step = []
    for _ in range(epochs):
        start, steps = time.perf_counter(), 0
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            steps += 1
        per_step.append((time.perf_counter() - start) / steps)
    return statistics.median(per_step[1:])


def leantrain(data_spec: str, patches: tuple[tuple[object, str, object], ...] = (), epochs: int = 3) -> float:
    config = RunConfig(model="mlp", data=data_spec, epochs=epochs, batch_size=64, lr=1e-3, loader="dataloader",
                       device="cpu", threads=torch.get_num_threads(), memory_check=False).validated()
    started = [mock.patch.object(*p) for p in patches]
    for p in started:
        p.start()
    try:
        record = execute(config, quiet=True)
    finally:
        for p in started:
            p.stop()
    return statistics.median(e["time_s"] / e["train_steps"] for e in record["epochs"][1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", default="imagenet-sim:n=20000")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    no_guard = (Guards, "before_optimizer_step", lambda self, state, loss: False)
    # The training steps' outputs require grad; validation's do not: only training's count is switched off.
    no_count = (tasks.Classification, "correct", lambda self, o, t: None if o.requires_grad else COUNT(self, o, t))
    variants: dict[str, Callable[[], float]] = {
        "plain loop": lambda: plain(args.data),
        "leantrain": lambda: leantrain(args.data),
        "leantrain, no non-finite guard": lambda: leantrain(args.data, (no_guard,)),
        "leantrain, no training-accuracy count": lambda: leantrain(args.data, (no_count,)),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            times[name].append(run())
    base = statistics.median(times["plain loop"])
    print(f"# {cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, {args.threads} "
          f"thread(s), {args.data}, batch 64, {args.repeats} repeats")
    print("| variant | µs/step [min–max] | × plain | extra µs/step |\n|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {1e6 * median:,.1f} [{1e6 * min(values):,.1f}–{1e6 * max(values):,.1f}] | "
              f"{median / base:.3f} | {1e6 * (median - base):+.1f} |")


if __name__ == "__main__":
    main()
