"""``auto`` settings resolved by measurement on this machine, for this model, before training starts.

    threads = "auto"         the CPUs this process may use, minus those other processes keep busy now
    batch_size = "auto"      the smallest power-of-two multiple of lr_batch within 10% of the best samples/s of a
                             real training step, and lr scaled to it from lr_batch (see choice.py)
    optimizer = "auto-adam"  Adam as a loop, foreach or fused kernel: the fastest step, timed
    precision = "auto"       fp32, bf16 or fp16 (+ loss scaling): the fastest real training step whose
                             loss stays with fp32's (see probe.py and choice.py)

A forced value is never probed. Optimizer and precision choices are cached (cache.py) so a probe costs
once per machine and model; threads follow the load of the moment and are measured each run (0.2 s).
A resumed run takes its choices from the checkpoint, never from a new measurement, so it continues with
the same precision it started with. The choices go into the run record and one printed line each.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from leantrain import machine
from leantrain.config import RunConfig
from leantrain.data.dataset import Dataset
from leantrain.data.streaming import head, to_device
from leantrain.errors import UsageError
from leantrain.train.adapters import task_for
from leantrain.train.memory import fits_in_memory
from leantrain.train.metrics import NOISY_FOREIGN_CORES, ForeignCpuMeter
from leantrain.train.optim import ADAM_KERNELS, make_optimizer
from leantrain.tuning import cache, probe
from leantrain.tuning.choice import Trial, choose, choose_batch, lr_rule, scaled_lr

AUTO = "auto"
AUTO_ADAM = "auto-adam"


@dataclass
class Measure:
    """The measuring functions resolve uses; tests inject fakes with chosen timings and losses."""
    busy_cores: Callable[[list[int]], float | None] = machine.busy_cores
    precision_trials: Callable[..., dict[str, Trial]] = probe.precision_trials
    batch_trials: Callable[..., dict[int, Trial]] = probe.batch_trials
    optimizer_trials: Callable[..., dict[str, Trial]] = probe.optimizer_trials
    cpu_meter: Callable[[], Any] = ForeignCpuMeter  # other processes' CPU during a probe: a disturbed one is not cached


@dataclass
class Tuned:
    config: RunConfig  # every auto knob replaced by its choice; the run's own config keeps "auto"
    record: dict[str, Any] = field(default_factory=dict)  # per knob: choice, timings, source; {} if none was auto


def auto_knobs(config: RunConfig) -> list[str]:
    """The auto knobs of ``config``, in the order they are resolved: each is timed with the ones before it chosen
    (the batch with the threads; the precision with the batch)."""
    knobs = (("threads", AUTO), ("batch_size", AUTO), ("optimizer", AUTO_ADAM), ("precision", AUTO))
    return [k for k, auto in knobs if getattr(config, k) == auto]


def resolve(
    config: RunConfig,
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    *,
    saved: dict[str, Any] | None = None,
    saved_from: str = "checkpoint",
    threads: dict[str, Any] | None = None,
    say: Callable[[str], None] = lambda line: None,
    measure: Measure | None = None,
    data_ranks: int = 1,
) -> Tuned:
    """Replace each auto knob of ``config`` by a measured (or cached, or ``saved``) choice; set threads.

    ``saved``: a record this returned before (from a checkpoint, or rank 0's under data parallelism, as
    ``saved_from`` says): its choices are taken as they are, never measured again. ``threads``: the entry
    auto threads take without measuring (a data-parallel worker's share of the node's cores). ``data_ranks``: the
    processes that split each epoch's samples (a batch size is per rank).
    """
    knobs = auto_knobs(config)
    if not knobs:
        return Tuned(config)
    measure = measure or Measure()
    record: dict[str, Any] = {"machine": machine.machine_key(device), "cpu_capability": machine.cpu_capability()}
    changes: dict[str, Any] = {}
    for knob in knobs:
        if knob == "threads" and threads is not None:
            entry = dict(threads)
        elif saved and knob in saved:
            entry = {**saved[knob], "source": saved_from}
        elif knob == "threads":
            entry = _decide_once(f"threads|{machine.machine_key(device)}", lambda: _threads(measure))
        elif knob == "batch_size":
            entry = _batch_size(config.replace(**changes), model, dataset, device, measure, data_ranks)
        elif knob == "optimizer":
            entry = _optimizer(config, model, device, measure)
        else:
            entry = _precision(config.replace(**changes), model, dataset, device, measure)
        if knob == "threads":
            torch.set_num_threads(entry["choice"])
            record["machine"] = machine.machine_key(device)  # the thread count is part of it
        record[knob] = entry
        changes[knob] = entry["choice"]
        if knob == "batch_size":
            changes["lr"] = entry["lr"]
        say(describe(knob, entry))
    return Tuned(config.replace(**changes), record)


def _threads(measure: Measure) -> dict[str, Any]:
    cpus = machine.usable_cpus()
    busy = measure.busy_cores(cpus)
    return {"choice": machine.free_threads(len(cpus), busy), "cpus": len(cpus), "busy_cores": busy, "source": "measured"}


def _optimizer(config: RunConfig, model: nn.Module, device: torch.device, measure: Measure) -> dict[str, Any]:
    def factory(kernel: str) -> probe.OptimizerFactory:
        kernel_config = config.replace(optimizer=kernel)
        return lambda params: make_optimizer(kernel_config, nn.ParameterList(params))

    key = cache.key("optimizer", device, model)
    kernels = {k: factory(k) for k in ADAM_KERNELS}
    return _measured(key, lambda: measure.optimizer_trials(model, kernels, device), measure,
                     lambda trials: choose(trials, "adam"))


def _batch_size(config: RunConfig, model: nn.Module, dataset: Dataset, device: torch.device, measure: Measure,
                data_ranks: int) -> dict[str, Any]:
    if dataset.streams is not None:
        raise UsageError(f"batch_size auto times batches of data held in memory; {dataset.name} is streamed: give a number")
    task = task_for(dataset)
    # Each rank's share of an epoch, and only the batches the memory holds (a CPU's OOM kills, it does not raise).
    sizes = _candidates_within(config, len(dataset.y_train) // data_ranks)
    candidates = [b for b in sizes  # the smallest is always timed: the run needs one
                  if b == sizes[0] or fits_in_memory(model, dataset, config.replace(batch_size=b), device)]
    precision = config.precision if config.precision != AUTO else "fp32"  # the precision is chosen at this batch next
    optimizer = config.replace(optimizer="adam") if config.optimizer == AUTO_ADAM else config

    def forward_loss_at(batch: int) -> Callable[[nn.Module], torch.Tensor]:
        x, y = to_device(head(dataset.x_train, batch), device), dataset.y_train[:batch].to(device)
        units = task.units(y)
        return lambda m: task.loss_sum(task.forward(m, x, y), y) / units

    key = cache.key("batch_size", device, model, task=dataset.task, optimizer=optimizer.optimizer, precision=precision,
                    input=_input_signature(dataset.x_train), candidates=",".join(map(str, candidates)), ranks=data_ranks)
    entry = _measured(key, lambda: measure.batch_trials(model, lambda m: make_optimizer(optimizer, m), forward_loss_at,
                                                        device, candidates, precision), measure, choose_batch)
    return {**entry, "lr": scaled_lr(config.lr, entry["choice"], config.lr_batch, config.optimizer),
            "lr_given": config.lr, "lr_batch": config.lr_batch, "lr_rule": lr_rule(config.optimizer),
            "probe_precision": precision}


def _candidates_within(config: RunConfig, share: int) -> list[int]:
    """The config's candidates no larger than a rank's ``share`` of the training split (a larger batch would make
    every epoch one step of the share); the share itself where even lr_batch is larger."""
    return [b for b in config.batch_candidates(share) if b <= share] or [max(share, 1)]


def _input_signature(x: Any) -> str:
    first = head(x, 1)
    tensors = first.values() if isinstance(first, dict) else first if isinstance(first, (tuple, list)) else [first]
    return ";".join(f"{tuple(t.shape[1:])}:{t.dtype}" for t in tensors)


def _precision(config: RunConfig, model: nn.Module, dataset: Dataset, device: torch.device, measure: Measure) -> dict[str, Any]:
    task = task_for(dataset)
    x = dataset.x_train[: config.batch_size].to(device)
    y = dataset.y_train[: config.batch_size].to(device)
    units = task.units(y)
    key = cache.key("precision", device, model, batch=len(y), task=dataset.task, optimizer=config.optimizer,
                    input=_input_signature(dataset.x_train))
    candidates, unsupported = precision_candidates(device)

    def trials() -> dict[str, Trial]:
        measured = measure.precision_trials(
            model, lambda m: make_optimizer(config, m), lambda m: task.loss_sum(task.forward(m, x, y), y) / units,
            device, candidates,
        )
        return {**measured, **{p: Trial(skipped=why) for p, why in unsupported.items()}}

    return _measured(key, trials, measure, lambda measured: choose(measured, "fp32"))


def precision_candidates(device: torch.device) -> tuple[list[str], dict[str, str]]:
    """Precisions worth timing here, and why the others are not (a known-slow path costs a long probe)."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return ["fp32", "bf16", "fp16"], {}
        return ["fp32", "fp16"], {"bf16": f"not supported by {machine.device_name(device)}"}
    flags = machine.cpu_flags()
    if "avx512_fp16" in flags or "amx_fp16" in flags:
        return ["fp32", "bf16", "fp16"], {}
    return ["fp32", "bf16"], {"fp16": "no fp16 arithmetic on this CPU (no avx512_fp16 or amx_fp16): emulated, ~16x slower"}


# Within ``decided_once``: every choice made so far, by its cache key (None: outside, each run decides anew).
_decided: dict[str, dict[str, Any]] | None = None


@contextmanager
def decided_once() -> Iterator[None]:
    """Each ``auto`` choice is made once within (per key: knob, machine, model, data shape) and reused, measured
    or not: an experiment's seeds of one recipe train one configuration, even when a busy machine kept the first
    measurement out of the cache (seed 0 chose bf16 and seed 1 fp32 once). Nests: the outermost scope holds."""
    global _decided
    outermost = _decided is None
    if outermost:
        _decided = {}
    try:
        yield
    finally:
        if outermost:
            _decided = None


def _decide_once(key: str, decide: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    if _decided is not None and key in _decided:
        return {**_decided[key], "source": "experiment"}
    entry = decide()
    if _decided is not None:
        _decided[key] = entry
    return entry


def _measured(key: str, run_trials: Callable[[], Mapping[Any, Trial]], measure: Measure,
              chooser: Callable[[Any], tuple[Any, dict[str, str]]]) -> dict[str, Any]:
    """The choice already made for ``key`` in this experiment, the cached entry, or a new measurement (cached when
    no other process disturbed it)."""
    return _decide_once(key, lambda: _cached_or_measured(key, run_trials, measure, chooser))


def _cached_or_measured(key: str, run_trials: Callable[[], Mapping[Any, Trial]], measure: Measure,
                        chooser: Callable[[Any], tuple[Any, dict[str, str]]]) -> dict[str, Any]:
    cached = cache.load(key)
    if cached is not None:
        return {**cached, "source": "cache"}
    foreign, start = measure.cpu_meter(), time.perf_counter()
    trials = run_trials()
    choice, rejected = chooser(trials)
    busy = foreign.cores()
    entry = {
        "choice": choice,
        "trials": {str(name): t.to_dict() for name, t in trials.items()},
        "rejected": rejected,
        "probe_s": time.perf_counter() - start,
        "foreign_cpu_cores": busy,
    }
    if busy is None or busy <= NOISY_FOREIGN_CORES:
        cache.store(key, entry)
    return {**entry, "source": "measured"}


def describe(knob: str, entry: dict[str, Any]) -> str:
    """One line, e.g. ``precision auto -> fp32 (fp32 12.1 ms/step, bf16 71.3 ms: 5.9x slower ..., fp16 skipped: ...)``."""
    label = {"optimizer": AUTO_ADAM}.get(knob, AUTO)
    source = {"cache": ", cached", "checkpoint": ", from the checkpoint", "rank 0": ", from rank 0",
              "experiment": ", decided earlier in this experiment"}.get(
        entry.get("source", ""), "")
    if knob == "threads" and "workers" in entry:
        return f"threads {label} -> {entry['choice']} ({entry['cpus']} CPUs shared by {entry['workers']} local workers)"
    if knob == "batch_size":
        rates = ", ".join(f"{batch} {1e3 * int(batch) / t['ms_per_step']:,.0f}/s"
                          for batch, t in entry.get("trials", {}).items() if t.get("ms_per_step"))
        return (f"batch_size {label} -> {entry['choice']}, lr {entry['lr']:.3g} ({entry['lr_given']:.3g} at "
                f"{entry['lr_batch']}, {entry['lr_rule']} rule; samples/s: {rates}{source})")
    if knob == "threads" and "cpus" in entry:
        busy = entry.get("busy_cores")
        shown = "unknown" if busy is None else f"{busy:.2f}"
        return f"threads {label} -> {entry['choice']} ({entry['cpus']} CPUs, {shown} busy with other processes{source})"
    parts = []
    for i, (name, trial) in enumerate(entry.get("trials", {}).items()):
        ms, why = trial.get("ms_per_step"), entry.get("rejected", {}).get(name, "")
        timing = f"{ms:.3g} ms" + ("/step" if i == 0 else "") if ms is not None else "skipped"
        note = f": {why}" if why and not why.startswith(("slower than", "not faster than")) else ""
        parts.append(f"{name} {timing}{note}")
    return f"{knob} {label} -> {entry['choice']} ({', '.join(parts)}{source})"
