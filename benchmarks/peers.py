"""The seed-000 MLP trained by the tools a user would otherwise pick, side by side with leantrain.

Arms, on the same data, the same initial weights and (but for `leantrain-lean`) seed 000's exact recipe,
DataLoader(TensorDataset, batch_size=64, shuffle=True), fp32, Adam 1e-3:

  plain               a hand-written PyTorch loop: the reference for every framework's cost
  lightning           Lightning's Trainer as its docs start: self.log("train_loss") each step, the default
                      logger and checkpointing on (the progress bar off: it would flood this output)
  lightning-bare      Trainer(logger=False, enable_checkpointing=False), no self.log: Lightning's own cost
  accelerate          Accelerator(cpu=True).prepare(model, optimizer, loader), accelerator.backward
  leantrain-baseline  leantrain's loop with experiments/default.toml's baseline recipe (the same recipe)
  leantrain-lean      default.toml's lean recipe for the case (sliced tensors, large batch, warmup-cosine,
                      precision / Adam kernel / threads chosen by measurement; the probe is not timed)

Arms run interleaved (plain, lightning, ..., then again), `--repeats` times, in this one process, each with
the machine's threads reset. Epoch time is training only (validation runs after the clock stops, for
every arm alike); speed = the median epoch time. Time to target: training seconds until the validation
accuracy first reaches the plain loop's final accuracy (of that repeat) less 0.005. Ratios are per repeat,
then median [min–max]. Each arm records the CPU other processes used meanwhile; a repeat above 0.15
cores is marked noisy. The machine's CPU, torch.backends.cpu.get_cpu_capability() and load average are printed.

    pip install 'leantrain[peers]'
    python benchmarks/peers.py [--data imagenet-sim] [--epochs 5] [--repeats 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from leantrain import data as data_sets
from leantrain import models
from leantrain.experiments.quality import quality_delta
from leantrain.experiments.report import median_spread
from leantrain.experiments.runner import load_experiment
from leantrain.machine import cpu_name
from leantrain.train.metrics import NOISY_FOREIGN_CORES, ForeignCpuMeter
from leantrain.train.record import time_to_target
from leantrain.train.run import execute

TOLERANCE = 0.005
ARMS = ("plain", "lightning", "lightning-bare", "accelerate", "leantrain-baseline", "leantrain-lean")


@dataclass
class Outcome:
    epoch_times: list[float]
    val_accs: list[float]  # after each epoch
    samples: int  # training samples per epoch
    foreign_cores: float | None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def epoch_time(self) -> float:
        return statistics.median(self.epoch_times)

    def time_to(self, target: float) -> float | None:
        return time_to_target([{"time_s": t, "acc": a} for t, a in zip(self.epoch_times, self.val_accs)], "acc", target)


class Task:
    """The shared set-up: data, seed-000 MLP with fixed initial weights, the baseline recipe's loader."""

    def __init__(self, data_spec: str, epochs: int, seed: int):
        self.data_spec, self.epochs, self.seed = data_spec, epochs, seed
        self.dataset = data_sets.load(data_spec, seed=seed)
        torch.manual_seed(seed)
        self.initial = models.build("mlp", self.dataset).state_dict()

    def model(self) -> nn.Module:
        model = models.build("mlp", self.dataset)
        model.load_state_dict(self.initial)
        return model

    def loader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(TensorDataset(self.dataset.x_train, self.dataset.y_train), batch_size=64, shuffle=True,
                          generator=generator)

    @torch.no_grad()
    def accuracy(self, model: nn.Module) -> float:
        model.eval()
        x, y = self.dataset.x_val, self.dataset.y_val
        correct = sum(int((model(x[i:i + 4096]).argmax(-1) == y[i:i + 4096]).sum()) for i in range(0, len(x), 4096))
        model.train()
        return correct / len(y)


def plain(task: Task) -> Outcome:
    model, loader = task.model(), task.loader()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    times, accs = [], []
    for _ in range(task.epochs):
        start = time.perf_counter()
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
        accs.append(task.accuracy(model))
    return Outcome(times, accs, len(task.dataset.x_train), None)


def accelerate(task: Task) -> Outcome:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model, loader = task.model(), task.loader()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    loss_fn = nn.CrossEntropyLoss()
    times, accs = [], []
    for _ in range(task.epochs):
        start = time.perf_counter()
        for x, y in loader:
            optimizer.zero_grad()
            accelerator.backward(loss_fn(model(x), y))
            optimizer.step()
        times.append(time.perf_counter() - start)
        accs.append(task.accuracy(accelerator.unwrap_model(model)))
    return Outcome(times, accs, len(task.dataset.x_train), None)


def lightning(task: Task, bare: bool) -> Outcome:
    import lightning as L  # noqa: N812 (Lightning's own spelling)

    class Module(L.LightningModule):
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net, self.loss_fn = net, nn.CrossEntropyLoss()

        def training_step(self, batch: Any, index: int) -> torch.Tensor:
            x, y = batch
            loss = self.loss_fn(self.net(x), y)
            if not bare:
                self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    times: list[float] = []
    accs: list[float] = []

    class Clock(L.Callback):
        """Stops the clock at each epoch's end, then validates (untimed, as for every arm)."""

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            times.append(time.perf_counter() - self.start)
            accs.append(task.accuracy(module.net))

    with tempfile.TemporaryDirectory() as root:
        options: dict[str, Any] = {"logger": False, "enable_checkpointing": False} if bare else {}
        trainer = L.Trainer(max_epochs=task.epochs, accelerator="cpu", devices=1, default_root_dir=root,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[Clock()], **options)
        trainer.fit(Module(task.model()), task.loader())
    return Outcome(times, accs, len(task.dataset.x_train), None)


def leantrain_arm(task: Task, recipe: str) -> Outcome:
    experiment = load_experiment(Path(__file__).parents[1] / "experiments" / "default.toml")
    family = task.data_spec.split(":")[0]
    planned = next((r for r in experiment.runs if r.recipe == recipe and r.config.data.split(":")[0] == family), None)
    if planned is None:
        sys.exit(f"experiments/default.toml has no case for {family}; choose one of its data sets")
    config = planned.config.replace(data=task.data_spec, epochs=task.epochs, seed=task.seed, name=f"peers-{recipe}")
    record = execute(config, model=task.model(), dataset=task.dataset, quiet=True)
    epochs = record["epochs"]
    notes = {"autotune": {k: v.get("choice") for k, v in (record["run"].get("autotune") or {}).items()
                          if isinstance(v, dict)}} if record["run"].get("autotune") else {}
    return Outcome([e["time_s"] for e in epochs], [e["val_acc"] for e in epochs], len(task.dataset.x_train), None, notes)


RUNNERS: dict[str, Callable[[Task], Outcome]] = {
    "plain": plain,
    "lightning": lambda task: lightning(task, bare=False),
    "lightning-bare": lambda task: lightning(task, bare=True),
    "accelerate": accelerate,
    "leantrain-baseline": lambda task: leantrain_arm(task, "baseline"),
    "leantrain-lean": lambda task: leantrain_arm(task, "lean"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="imagenet-sim", help="a data set of experiments/default.toml, with options")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of: {', '.join(ARMS)}")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in RUNNERS]
    if unknown or "plain" not in arms:
        sys.exit(f"--arms: {', '.join(unknown) or 'plain is required (the reference)'}; choose from {', '.join(ARMS)}")
    _quiet_peers()
    task = Task(args.data, args.epochs, args.seed)
    warm = Task(args.data, 1, args.seed)
    for arm in arms:  # untimed: imports, first-call kernel selection, lean's probe cache
        torch.set_num_threads(args.threads)
        RUNNERS[arm](warm)
    load_before = os.getloadavg()
    results: dict[str, list[Outcome]] = {arm: [] for arm in arms}
    for repeat in range(args.repeats):
        for arm in arms[repeat % len(arms):] + arms[:repeat % len(arms)]:  # rotated: no arm always goes first
            torch.set_num_threads(args.threads)
            meter = ForeignCpuMeter()
            outcome = RUNNERS[arm](task)
            outcome.foreign_cores = meter.cores()
            results[arm].append(outcome)
            print(f"repeat {repeat + 1}/{args.repeats} {arm}: epoch {outcome.epoch_time:.3f}s, "
                  f"acc {outcome.val_accs[-1]:.4f}, other processes {outcome.foreign_cores or 0:.2f} cores, "
                  f"threads after {torch.get_num_threads()}",
                  file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    print(_machine_line(args, load_before, load_after))
    print(_table(results))
    if args.json:
        args.json.write_text(json.dumps({arm: [o.__dict__ for o in outs] for arm, outs in results.items()}, indent=1))


def _table(results: dict[str, list[Outcome]]) -> str:
    reference = results["plain"]
    lightning_default = results.get("lightning")
    header = ["arm", "epoch time (s)", "samples/s", "× plain loop speed", "final val acc", "Δ vs plain loop",
              "time to target (s)", "speedup to target vs plain", "speedup to target vs Lightning", "noisy repeats",
              "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, outcomes in results.items():
        speed = [ref.epoch_time / o.epoch_time for ref, o in zip(reference, outcomes)]
        targets = [ref.val_accs[-1] - TOLERANCE for ref in reference]
        reached = [o.time_to(t) for o, t in zip(outcomes, targets)]
        vs_plain = [ref.time_to(t) / r for ref, r, t in zip(reference, reached, targets) if r and ref.time_to(t)]
        vs_lightning = [lo.time_to(t) / r for lo, r, t in zip(lightning_default or [], reached, targets)
                        if r and lo.time_to(t)]
        final = statistics.median(o.val_accs[-1] for o in outcomes)
        noisy = sum((o.foreign_cores or 0) > NOISY_FOREIGN_CORES for o in outcomes)
        lines.append("| " + " | ".join([
            arm,
            median_spread([o.epoch_time for o in outcomes], "{:.3f}"),
            median_spread([o.samples / o.epoch_time for o in outcomes], "{:,.0f}"),
            median_spread(speed, "{:.2f}×"),
            f"{final:.4f}",
            quality_delta(final, statistics.median(o.val_accs[-1] for o in reference), True).render(),
            median_spread([r for r in reached if r is not None], "{:.3f}") if all(reached) else
            f"not reached in {sum(r is None for r in reached)}/{len(reached)}",
            median_spread(vs_plain, "{:.2f}×"),
            median_spread(vs_lightning, "{:.2f}×") if lightning_default else "—",
            f"{noisy}/{len(outcomes)}",
            json.dumps(outcomes[0].notes["autotune"]) if outcomes[0].notes.get("autotune") else "",
        ]) + " |")
    return "\n".join(lines)


def _machine_line(args: argparse.Namespace, before: tuple[float, ...], after: tuple[float, ...]) -> str:
    versions = []
    for name in ("lightning", "accelerate"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            versions.append(f"{name} not installed")
    return (f"\nmachine: {cpu_name()} | capability {torch.backends.cpu.get_cpu_capability()} | {os.cpu_count()} CPUs | "
            f"threads {args.threads} | torch {torch.__version__} | {' | '.join(versions)} | load average "
            f"{before[0]:.2f} before, {after[0]:.2f} after | data {args.data} | epochs {args.epochs} | "
            f"repeats {args.repeats}\n")


def _quiet_peers() -> None:
    """Lightning's info lines and its advice about DataLoader workers would bury the table. Lightning sets its
    loggers' levels when imported, so import it first."""
    try:
        import lightning  # noqa: F401
    except ImportError:
        pass
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


if __name__ == "__main__":
    main()
