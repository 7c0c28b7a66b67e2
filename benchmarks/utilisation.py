"""Where a lean-recipe training step spends its time, and so what bounds its utilisation (issue 13).

Trains the seed-000 MLP with the default experiment's lean recipe for a case (tensor batches, the case's batch
size, fused Adam, fp32, the machine's threads) and profiles ``--steps`` steps with torch.profiler after a warm-up.
Self CPU time per operator is grouped into matmul (the layers' GEMMs, forward and backward), elementwise
(activations and their gradients, bias sums), loss, optimizer, batch gathering and the rest. Utilisation =
3 x forward FLOPs x samples/s over the fp32 matmul peak measured in the same process (leantrain's own peak
probe); "matmul at" = the GEMMs' FLOPs over the time the GEMMs themselves took, over the same peak.

    python benchmarks/utilisation.py [--case imagenet-sim] [--steps 200] [--batch-size N] [--compile]
"""
from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from leantrain import data as data_sets
from leantrain import models
from leantrain.experiments.runner import load_experiment
from leantrain.machine import cpu_name
from leantrain.train.metrics import peak_matmul_flops

GROUPS = {
    "matmul": ("addmm", "aten::mm", "aten::matmul", "aten::bmm", "aten::linear"),
    "elementwise": ("relu", "threshold", "aten::sum", "aten::add", "aten::mul", "aten::fill", "aten::zero",
                    "aten::copy_", "aten::t", "aten::view", "aten::reshape", "aten::expand", "aten::as_strided",
                    "aten::transpose", "aten::empty", "aten::ones_like", "aten::detach"),
    "loss": ("log_softmax", "nll_loss", "cross_entropy"),
    "optimizer": ("adam", "lerp", "addcmul", "addcdiv", "sqrt", "_foreach"),
    "batch gathering": ("index_select", "randperm"),
}


def group_of(name: str) -> str:
    lowered = name.lower()
    for group in ("loss", "optimizer", "batch gathering", "matmul", "elementwise"):
        if any(key.lower() in lowered for key in GROUPS[group]):
            return group
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="imagenet-sim", help="a data set of experiments/default.toml")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=None, help="instead of the case's lean batch")
    parser.add_argument("--compile", action="store_true", help="the step's forward and loss through torch.compile")
    args = parser.parse_args()
    experiment = load_experiment(Path(__file__).resolve().parents[1] / "experiments" / "default.toml")
    (planned,) = [r for r in experiment.runs if r.recipe == "lean" and r.config.data == args.case]
    config = planned.config
    batch = args.batch_size or config.batch
    dataset = data_sets.load(config.data, seed=0)
    torch.manual_seed(0)
    model = models.build(config.model, dataset)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    x_all, y_all = dataset.x_train, dataset.y_train
    generator = torch.Generator().manual_seed(0)

    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(x), y, reduction="sum")

    loss_of = torch.compile(forward_loss) if args.compile else forward_loss

    def step() -> None:
        index = torch.randint(len(x_all), (batch,), generator=generator)
        x, y = x_all.index_select(0, index), y_all.index_select(0, index)
        loss = loss_of(x, y)
        loss.backward(torch.full((), 1.0 / batch))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(20):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    peak = peak_matmul_flops(torch.device("cpu"), torch.float32)
    flops = models.flops_per_sample(model)
    rate = batch * args.steps / elapsed
    times: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        times[group_of(event.key)] += event.self_cpu_time_total / 1e6
    total = sum(times.values())
    gemm_flops = 3 * flops * batch * args.steps
    print(f"# {cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}; {config.model} on {config.data}, "
          f"batch {batch}, fused Adam, fp32{', compiled' if args.compile else ''}; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s")
    print(f"unprofiled: {rate:,.0f} samples/s, {1e3 * elapsed / args.steps:.3f} ms/step, utilisation "
          f"{3 * flops * rate / peak:.1%}")
    print(f"matmul at {gemm_flops / max(times['matmul'], 1e-9) / peak:.1%} of peak while it runs (profiled time)")
    print("| part of the step | share of profiled op time |\n|---|---|")
    for group, seconds in sorted(times.items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {seconds / total:.1%} |")


if __name__ == "__main__":
    main()
