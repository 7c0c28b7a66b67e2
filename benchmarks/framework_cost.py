"""Where leantrain's loop spends its time beyond a plain PyTorch loop, per step (issues 15 and 28).

The seed's model (MLP, Adam 1e-3, fp32) trained by a hand-written loop and by leantrain (``execute``, what lt.fit
runs), and leantrain again with one piece switched off by patching: the non-finite guard, the training-accuracy
count; or with its backward made as a plain loop makes it (``loss.backward(gradient)``, not the engine call).
Batches are sliced from tensors (``--loader tensor``, the default: a shuffled order per epoch, each batch gathered
by index, on both sides) or drawn from a DataLoader (``--loader dataloader``, the seed's recipe), at each
``--batch``. Interleaved (the arms' order rotates per repeat), repeated; per-step time = the median over epochs
after the first of an epoch's training time over its steps, then median [min-max] over repeats. Every arm records
the CPU other processes used meanwhile (a median above 0.15 cores marks the row noisy: re-run it).

    python benchmarks/framework_cost.py [--batch 64 512] [--loader tensor|dataloader] [--threads 1] [--repeats 5]
                                        [--epochs 4] [--data imagenet-sim:n=20000]
                                        [--paired N [--count-arms] | --in-situ | --ops]

``--paired N`` alternates the two loops epoch by epoch in one leantrain run instead (N epochs of each): after each
of leantrain's epochs a callback trains one epoch of the plain loop on its own model and optimizer, so each of
leantrain's epochs lies between two of the plain loop's, a fraction of a second apart, and is compared with their
mean. A machine whose speed drifts by ±20% between whole runs blurs these pairs far less. ``--repeats`` such runs
per variant: a run's pairs share one placement of the models in memory, which moves a whole run by a few percent
(its pairs' 95% confidence interval does not cover the next run's median), so the runs are the repeats.
``--count-arms`` makes the arms the training-accuracy count's parts (keeping the outputs, the targets, the compare).
``--in-situ`` times each per-step piece (the count, the guard, ...) inside leantrain's loop; ``--ops`` counts the
Python calls and the aten operators a step makes in each loop (what a noisy machine cannot blur).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import TypeVar
from unittest import mock

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from leantrain.config import RunConfig
from leantrain.data import load
from leantrain.data.dataset import Dataset
from leantrain.machine import cpu_name
from leantrain.models import build
from leantrain.techniques.amp import Precision
from leantrain.train import correct_count, loop
from leantrain.train.callbacks import Callback
from leantrain.train.correct_count import CorrectCount
from leantrain.train.guards import Guards
from leantrain.train.metrics import NOISY_FOREIGN_CORES, ForeignCpuMeter
from leantrain.train.run import execute


def _batches(data: Dataset, batch: int, loader: str, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """What a user writes: a DataLoader, or a shuffled order per epoch and ``x[index]`` per batch."""
    if loader == "dataloader":
        generator = torch.Generator().manual_seed(epoch)
        dataset = torch.utils.data.TensorDataset(data.x_train, data.y_train)
        yield from torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, generator=generator)
        return
    order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(epoch))
    for start in range(0, len(order), batch):
        index = order[start:start + batch]
        yield data.x_train.index_select(0, index), data.y_train.index_select(0, index)


class PlainLoop:
    """The hand-written loop: its own model, Adam and loss; one epoch per call, timed."""

    def __init__(self, data: Dataset, batch: int, loader: str):
        torch.manual_seed(0)
        self.data, self.batch, self.loader = data, batch, loader
        self.model = build("mlp", data)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss_fn = nn.CrossEntropyLoss()

    def epoch(self, epoch: int) -> float:
        """Seconds per step over one epoch."""
        model, optimizer, loss_fn = self.model, self.optimizer, self.loss_fn
        start, steps = time.perf_counter(), 0
        for x, y in _batches(self.data, self.batch, self.loader, epoch):
            loss_fn(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
        return (time.perf_counter() - start) / steps


def plain(data: Dataset, batch: int, loader: str, epochs: int) -> float:
    plain_loop = PlainLoop(data, batch, loader)
    return statistics.median([plain_loop.epoch(epoch) for epoch in range(epochs)][1:])


@contextlib.contextmanager
def _patched(patches: tuple[tuple[object, str, object], ...]) -> Iterator[None]:
    """``(owner, attribute, replacement)`` patched for the duration: a piece of leantrain switched off."""
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(mock.patch.object(*patch))
        yield


def _config(spec: str, batch: int, loader: str, epochs: int) -> RunConfig:
    """leantrain's side: the plain loop's model, batch, Adam 1e-3 and fp32, on this process's threads."""
    return RunConfig(model="mlp", data=spec, epochs=epochs, batch_size=batch, lr=1e-3, loader=loader, device="cpu",
                     threads=torch.get_num_threads(), memory_check=False).validated()


def leantrain(data: Dataset, batch: int, loader: str, epochs: int, patches: tuple[tuple[object, str, object], ...] = (),
              spec: str = "") -> float:
    config = _config(spec, batch, loader, epochs)
    with _patched(patches):
        record = execute(config, dataset=data, quiet=True)
    return statistics.median(e["time_s"] / e["train_steps"] for e in record["epochs"][1:])


NO_GUARD = (Guards, "before_optimizer_step", lambda self, state, loss: False)
NO_COUNT = (CorrectCount, "add", lambda self, output, target: None)  # training's count; validation's is kept
# What a plain loop's ``loss.backward(gradient)`` costs beside the engine call leantrain makes.
PUBLIC_BACKWARD = (loop, "backward_from", lambda loss, gradient: loss.backward(gradient))


# leantrain as it runs, and with one piece switched off or made as a plain loop makes it: the patches of each.
LEANTRAIN_ARMS: dict[str, tuple[tuple[object, str, object], ...]] = {
    "leantrain": (),
    "leantrain, no non-finite guard": (NO_GUARD,),
    "leantrain, no training-accuracy count": (NO_COUNT,),
    "leantrain, backward through torch.autograd.backward": (PUBLIC_BACKWARD,),
}


_NOTHING = torch.empty(0)  # the half a diagnostic arm does not keep


def _keep_outputs_only(self: CorrectCount, output: torch.Tensor, target: torch.Tensor) -> None:
    self.kept_outputs.append((output.detach(), _NOTHING))


def _keep_targets_only(self: CorrectCount, output: torch.Tensor, target: torch.Tensor) -> None:
    self.kept_outputs.append((_NOTHING, target))


_HELD: list[object] = []  # what a diagnostic arm holds outside the count's lists (the outputs' memory alone)


def _hold_output_memory_only(self: CorrectCount, output: torch.Tensor, target: torch.Tensor) -> None:
    _HELD.append(output.untyped_storage())  # the output's memory held, without a detached tensor made for it


def _drop_kept(self: CorrectCount) -> None:
    self._clear_kept()
    _HELD.clear()


NEVER_COMPARE = (CorrectCount, "compare_kept", _drop_kept)
# ``--count-arms``: which part of the training-accuracy count costs what (diagnosis: the arms without a compare count
# nothing, and those keeping one half could not count right).
COUNT_ARMS: dict[str, tuple[tuple[object, str, object], ...]] = {
    "leantrain": (),
    "no training-accuracy count": (NO_COUNT,),
    "keep outputs and targets, never compare": (NEVER_COMPARE,),
    "keep the outputs only, never compare": ((CorrectCount, "add", _keep_outputs_only), NEVER_COMPARE),
    "keep the targets only, never compare": ((CorrectCount, "add", _keep_targets_only), NEVER_COMPARE),
    "hold the outputs' memory only (no tensor made), never compare": (
        (CorrectCount, "add", _hold_output_memory_only), NEVER_COMPARE),
    "detach each output, keep nothing": ((CorrectCount, "add", lambda self, output, target: output.detach()),),
    "compare every 64 micro-batches": ((correct_count, "KEEP_OUTPUTS", 64),),
    "predictions each step (argmax a step, no output kept)": ((CorrectCount, "_reserve", lambda self, output: False),),
}


def variants(data: Dataset, spec: str, batch: int, loader: str, epochs: int) -> dict[str, Callable[[], float]]:
    arms: dict[str, Callable[[], float]] = {"plain loop": lambda: plain(data, batch, loader, epochs)}
    for name, patches in LEANTRAIN_ARMS.items():
        arms[name] = functools.partial(leantrain, data, batch, loader, epochs, patches, spec)
    return arms


def measure(arms: dict[str, Callable[[], float]], repeats: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each arm ``repeats`` times, interleaved, the order rotated per repeat; per-step seconds and foreign cores."""
    for run in arms.values():  # untimed: imports, first-call kernel selection
        run()
    names = list(arms)
    times: dict[str, list[float]] = {name: [] for name in names}
    foreign: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            meter = ForeignCpuMeter()
            times[name].append(arms[name]())
            foreign[name].append(meter.cores() or 0.0)
    return times, foreign


def table(times: dict[str, list[float]], foreign: dict[str, list[float]]) -> str:
    base = statistics.median(times["plain loop"])
    lines = ["| variant | µs/step [min–max] | × plain loop speed [min–max] | extra µs/step | other processes (cores) |",
             "|---|---|---|---|---|"]
    for name, values in times.items():
        median = statistics.median(values)
        speed = [p / v for p, v in zip(times["plain loop"], values)]  # per repeat: the plain loop of that repeat
        noisy = " (noisy)" if statistics.median(foreign[name]) > NOISY_FOREIGN_CORES else ""
        lines.append(f"| {name} | {1e6 * median:,.1f} [{1e6 * min(values):,.1f}–{1e6 * max(values):,.1f}] | "
                     f"{statistics.median(speed):.3f}× [{min(speed):.3f}–{max(speed):.3f}] | "
                     f"{1e6 * (median - base):+.1f} | {statistics.median(foreign[name]):.2f} "
                     f"[{min(foreign[name]):.2f}–{max(foreign[name]):.2f}]{noisy} |")
    return "\n".join(lines)


class PlainEpochBeside(Callback):
    """After each of leantrain's epochs, one epoch of the plain loop (its own model and optimizer)."""

    def __init__(self, plain_loop: PlainLoop):
        self.plain_loop = plain_loop
        self.per_step: list[float] = []

    def on_epoch_end(self, state: object, record: dict[str, object]) -> None:
        self.per_step.append(self.plain_loop.epoch(len(self.per_step)))


def paired(data: Dataset, spec: str, batch: int, loader: str, pairs: int,
           patches: tuple[tuple[object, str, object], ...] = ()) -> list[float]:
    """Per pair, the plain loop's speed over leantrain's: leantrain's epoch i (i >= 1: the first is warm-up) against
    the mean of the plain loop's epochs just before and just after it (a linear drift cancels)."""
    beside = PlainEpochBeside(PlainLoop(data, batch, loader))
    with _patched(patches):
        record = execute(_config(spec, batch, loader, pairs + 1), dataset=data, quiet=True, techniques=[beside])
    lean = [e["time_s"] / e["train_steps"] for e in record["epochs"]]
    around = beside.per_step
    return [(around[i - 1] + around[i]) / 2 / lean[i] for i in range(1, len(lean))]


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """The median and a distribution-free 95% confidence interval for it: the order statistics whose ranks the
    binomial(n, 1/2) distribution brackets (normal approximation, n >= 10)."""
    ordered = sorted(values)
    n = len(ordered)
    half_width = 1.96 * (n ** 0.5) / 2
    low, high = max(0, int(n / 2 - half_width)), min(n - 1, int(n / 2 + half_width + 1) - 1)
    return statistics.median(ordered), ordered[low], ordered[high]


def paired_table(data: Dataset, spec: str, batch: int, loader: str, pairs: int, runs: int,
                 arms: dict[str, tuple[tuple[object, str, object], ...]] = LEANTRAIN_ARMS) -> str:
    """Each variant ``runs`` times (runs interleaved, the order rotated): a run's pairs share one placement of each
    model in memory, which shifts a whole run by a few percent, so runs, not pairs, are the repeats."""
    names = list(arms)
    per_run: dict[str, list[float]] = {name: [] for name in names}
    pooled: dict[str, list[float]] = {name: [] for name in names}
    for run in range(runs):
        for name in names[run % len(names):] + names[:run % len(names)]:
            speeds = paired(data, spec, batch, loader, pairs, arms[name])
            per_run[name].append(statistics.median(speeds))
            pooled[name] += speeds
    lines = ["| variant | × plain loop's speed: median of the runs' medians [min–max] | all pairs: median [95% CI] |",
             "|---|---|---|"]
    for name in names:
        median, low, high = median_interval(pooled[name])
        lines.append(f"| {name} | {statistics.median(per_run[name]):.3f}× [{min(per_run[name]):.3f}–"
                     f"{max(per_run[name]):.3f}] | {median:.3f}× [{low:.3f}–{high:.3f}] |")
    return "\n".join(lines)


# The per-step pieces timed inside the real loop by ``--in-situ``: (owner, attribute, label).
PIECES = (
    (loop, "_train_step", "whole step"),
    (loop, "_backward_step", "forward and backward (with the count)"),
    (Precision, "step", "optimizer step"),
    (CorrectCount, "add", "training-accuracy count: keep the output (or its predictions)"),
    (CorrectCount, "compare_kept", "training-accuracy count: predict and compare the kept ones "
                                   "(when the memory bound nears, and at the epoch's end)"),
    (Guards, "before_optimizer_step", "non-finite guard"),
    (loop, "_count", "counting units and samples"),
)


def in_situ(data: Dataset, spec: str, batch: int, loader: str, epochs: int) -> dict[str, tuple[float, float]]:
    """Each piece's median microseconds per call and its microseconds per step (all its calls' time over the
    steps: what a piece called every few steps costs a step), timed inside leantrain's own loop (a timer around
    each call: a piece costs more there than alone, where its code and data stay in cache)."""
    calls: dict[str, list[int]] = {label: [] for _, _, label in PIECES}

    def timer(original: Callable[..., object], label: str) -> Callable[..., object]:
        def timed(*args: object, **kwargs: object) -> object:
            start = time.perf_counter_ns()
            result = original(*args, **kwargs)
            calls[label].append(time.perf_counter_ns() - start)
            return result
        return timed

    patches = tuple((owner, name, timer(getattr(owner, name), label)) for owner, name, label in PIECES)
    leantrain(data, batch, loader, epochs, patches, spec)  # untimed: first-call kernel selection
    for values in calls.values():
        values.clear()
    leantrain(data, batch, loader, epochs, patches, spec)
    steps = len(calls["whole step"])
    return {label: (statistics.median(values) / 1000, sum(values) / steps / 1000)
            for label, values in calls.items() if values}


class _OperatorCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


class _PythonCalls:
    """Python function calls (Python's own and builtins/C functions) while entered: what a step's Python costs, in
    calls (``sys.setprofile``), which a noisy machine cannot blur either."""

    def __init__(self) -> None:
        self.calls = 0

    def _count(self, frame: object, event: str, arg: object) -> None:
        if event in ("call", "c_call"):
            self.calls += 1

    def __enter__(self) -> None:
        sys.setprofile(self._count)

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)


OPS_STEPS = 4  # steps whose operators ``--ops`` counts, after two


Counter = TypeVar("Counter", bound=contextlib.AbstractContextManager[object])


def per_step_counts(data: Dataset, spec: str, batch: int, loader: str,
                    counter: Callable[[], Counter]) -> dict[str, Counter]:
    """A counter (``_OperatorCount``, ``_PythonCalls``) over ``OPS_STEPS`` training steps (after two) of the plain loop
    and of leantrain's (``_train_step``: batch drawing, the same in both, and the loop's lines between steps left
    out); each loop's counter, by name."""
    steps = OPS_STEPS
    torch.manual_seed(0)
    model = build("mlp", data)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    batches = list(_batches(data, batch, loader, 0))[: steps + 2]
    plain_count = counter()
    for index, (x, y) in enumerate(batches):
        with plain_count if index >= 2 else contextlib.nullcontext():
            loss_fn(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
    lean_count, calls = counter(), [0]
    original = loop._train_step

    def counted(*args: object, **kwargs: object) -> int:
        calls[0] += 1
        with lean_count if 2 < calls[0] <= steps + 2 else contextlib.nullcontext():
            return original(*args, **kwargs)  # type: ignore[arg-type]

    leantrain(data, batch, loader, 2, ((loop, "_train_step", counted),), spec)
    return {"plain loop": plain_count, "leantrain": lean_count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--loader", choices=("tensor", "dataloader"), default="tensor")
    parser.add_argument("--data", default="imagenet-sim:n=20000")
    parser.add_argument("--in-situ", action="store_true", help="time each per-step piece inside leantrain's loop")
    parser.add_argument("--ops", action="store_true", help="count each loop's aten operators per step")
    parser.add_argument("--paired", type=int, metavar="N", help="alternate the two loops epoch by epoch, N pairs")
    parser.add_argument("--count-arms", action="store_true",
                        help="with --paired: the training-accuracy count's parts as arms, not the guard's and the count's")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load(args.data)
    for batch in args.batch:
        if args.ops:
            # Counted apart: the operator count's own Python (a dispatch mode) would be counted as the step's.
            python = per_step_counts(data, args.data, batch, args.loader, _PythonCalls)
            counts = per_step_counts(data, args.data, batch, args.loader, _OperatorCount)
            plain_ops, lean_ops = counts["plain loop"].counts, counts["leantrain"].counts
            print(f"\n# per step, batch {batch}: Python calls: plain loop "
                  f"{python['plain loop'].calls / OPS_STEPS:g}, leantrain {python['leantrain'].calls / OPS_STEPS:g}"
                  f"; aten operators: plain loop {sum(plain_ops.values()) / OPS_STEPS:g}, "
                  f"leantrain {sum(lean_ops.values()) / OPS_STEPS:g}\n| operator | plain loop | leantrain |\n|---|---|---|")
            for name in sorted(set(plain_ops) | set(lean_ops)):
                if plain_ops[name] != lean_ops[name]:
                    print(f"| {name} | {plain_ops[name] / OPS_STEPS:g} | {lean_ops[name] / OPS_STEPS:g} |")
            continue
        if args.paired:
            print(f"\n# paired epochs: {cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), torch "
                  f"{torch.__version__}, {args.threads} thread(s), {args.data}, {args.loader} batches of {batch}, "
                  f"{args.repeats} runs of {args.paired} pairs a variant, load average {os.getloadavg()[0]:.2f} before")
            arms = COUNT_ARMS if args.count_arms else LEANTRAIN_ARMS
            print(paired_table(data, args.data, batch, args.loader, args.paired, args.repeats, arms))
            print(f"load average {os.getloadavg()[0]:.2f} after")
            continue
        if args.in_situ:
            print(f"\n# in situ: {cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), {args.threads} thread(s), "
                  f"{args.data}, {args.loader} batches of {batch}\n| piece | µs per call (median) | µs per step |\n"
                  "|---|---|---|")
            for label, (per_call, per_step) in in_situ(data, args.data, batch, args.loader, args.epochs).items():
                print(f"| {label} | {per_call:,.1f} | {per_step:,.1f} |")
            continue
        load_before = os.getloadavg()[0]
        times, foreign = measure(variants(data, args.data, batch, args.loader, args.epochs), args.repeats)
        print(f"\n# {cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, "
              f"{args.threads} thread(s), {args.data}, {args.loader} batches of {batch}, {args.epochs} epochs, "
              f"{args.repeats} repeats, load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
        print(table(times, foreign))


if __name__ == "__main__":
    main()
