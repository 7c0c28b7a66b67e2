"""What ``leantrain advise`` tries against the user's recipe: one candidate per technique or ``auto`` setting.

A candidate is the baseline with a few settings changed (``changes``), never a new run configuration from
scratch, so what it measures is that one change. Every registered technique appears here, either as candidates
or in ``NOT_FOR_SPEED`` with the reason advise does not try it (``tests/advise`` holds the registry to that),
so a technique added later is never silently left out of the advice.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from leantrain.tuning.choice import lr_rule, scaled_lr

# Registered techniques advise does not try for speed, and why (shown under "not tried").
NOT_FOR_SPEED = {
    "grad_clip": "gradient clipping guards stability, it does not speed training up",
    "decode-cache": "cached decoding speeds up generation (predict, evaluate), not training",
}


@dataclass(frozen=True)
class Candidate:
    name: str  # short, for the table: "bf16", "batch 256", "fused Adam"
    technique: str  # the technique or setting it tries: precision, batch_size, optimizer, ...
    changes: dict[str, Any]  # RunConfig keys changed from the baseline
    what: str  # one line for the reader: what changes and why it may help
    not_applicable: str | None = field(default=None, compare=False)  # known before any step: why it is not tried

    def apply(self, baseline: dict[str, Any]) -> dict[str, Any]:
        return {**baseline, **self.changes}


@dataclass(frozen=True)
class Machine:
    """What the candidates depend on: the device and the cores."""

    device: str  # "cpu" or "cuda"
    cores: int


def _precision(base: dict[str, Any], machine: Machine) -> list[Candidate]:
    if base["precision"] not in ("fp32", "auto"):
        return []
    out = [Candidate("bf16", "precision", {"precision": "bf16"}, "bf16 autocast (weights stay fp32): half the bytes "
                     "per activation; fast where the CPU or GPU has bf16 units, slow where it is emulated")]
    fp16 = Candidate("fp16", "precision", {"precision": "fp16"}, "fp16 autocast with dynamic loss scaling")
    if machine.device != "cuda":
        fp16 = Candidate(fp16.name, fp16.technique, fp16.changes, fp16.what,
                         not_applicable="fp16 autocast needs a GPU: CPUs have no fast fp16 matmul")
    return out + [fp16]


def _optimizer(base: dict[str, Any], machine: Machine) -> list[Candidate]:
    if base["optimizer"] not in ("adam", "auto-adam"):
        return []
    return [Candidate("foreach Adam", "optimizer", {"optimizer": "foreach-adam"},
                      "the same Adam update, one kernel per group of tensors"),
            Candidate("fused Adam", "optimizer", {"optimizer": "fused-adam"},
                      "the same Adam update in one fused kernel")]


def batch(base: dict[str, Any], size: int) -> Candidate:
    """The baseline at batch ``size``, its lr scaled by the rule batch_size auto uses (√ under Adam, linear sgd)."""
    factor, rule = size / int(base["batch_size"]), lr_rule(base["optimizer"])
    lr = scaled_lr(float(base["lr"]), size, int(base["batch_size"]), base["optimizer"])
    how = f"×{factor:g}" if rule == "linear" else f"by √{factor:g} = {math.sqrt(factor):.3g}"
    return Candidate(f"batch {size}", "batch_size", {"batch_size": size, "lr": lr},
                     f"{factor:g}× the batch (fewer, fuller steps), lr scaled {how} ({rule})")


def _batch(base: dict[str, Any], machine: Machine) -> list[Candidate]:
    if not isinstance(base["batch_size"], int):
        return []
    return [batch(base, int(base["batch_size"]) * 4)]


def _loader(base: dict[str, Any], machine: Machine) -> list[Candidate]:
    if base["loader"] != "dataloader":
        return []
    return [Candidate("tensor batches", "loader", {"loader": "tensor"},
                      "batches sliced from tensors in memory instead of a DataLoader collating samples")]


def _schedule(base: dict[str, Any], machine: Machine) -> list[Candidate]:
    if base["schedule"] != "constant":
        return []
    return [Candidate("warmup-cosine", "schedule", {"schedule": "warmup-cosine"},
                      "linear warmup then cosine decay of the lr: often reaches the target in fewer epochs")]


def _switch(name: str, technique: str, key: str, value: Any, what: str) -> Callable[..., list[Candidate]]:
    def candidates(base: dict[str, Any], machine: Machine) -> list[Candidate]:
        return [] if base[key] == value else [Candidate(name, technique, {key: value}, what)]
    return candidates


def _trim_padding(base: dict[str, Any], machine: Machine) -> list[Candidate]:
    if base["trim_padding"] or base["length_buckets"]:  # length buckets trim already
        return []
    return [Candidate("trimmed padding", "trim_padding", {"trim_padding": True}, "each batch of padded sequences "
                      "trimmed to its longest row: the same batches, fewer positions computed")]


def _threads(base: dict[str, Any], machine: Machine) -> list[Candidate]:
    if base["threads"] is not None or machine.cores < 2:
        return []
    return [Candidate("threads auto", "threads", {"threads": "auto"},
                      "as many threads as the cores other processes leave free")]


def _processes(base: dict[str, Any], machine: Machine) -> list[Candidate]:
    if base["parallel"] != "none" or not isinstance(base["batch_size"], int):
        return []
    procs = 2
    per_worker = int(base["batch_size"]) // procs
    if machine.device == "cuda":
        return [Candidate("2 processes", "processes", {}, "", not_applicable="data parallel on one GPU: one process")]
    if machine.cores < procs or per_worker * procs != int(base["batch_size"]):
        why = (f"{machine.cores} core(s): nothing to split over" if machine.cores < procs
               else f"batch {base['batch_size']} does not split evenly over {procs} workers")
        return [Candidate(f"{procs} processes", "processes", {}, "", not_applicable=why)]
    return [Candidate(f"{procs} processes", "processes",
                      {"parallel": "ddp", "procs": procs, "batch_size": per_worker, "threads": machine.cores // procs},
                      f"DDP over {procs} processes ({machine.cores // procs} thread(s) each), the same global batch")]


GENERATORS: dict[str, Callable[[dict[str, Any], Machine], list[Candidate]]] = {
    "precision": _precision,
    "optimizer": _optimizer,
    "batch_size": _batch,
    "loader": _loader,
    "schedule": _schedule,
    "compile": _switch("compile", "compile", "compile", True, "torch.compile the forward (graphs checked by dynamo's "
                       "counters: a compile that traced nothing is reported, not counted)"),
    "checkpointing": _switch("checkpointing √L", "checkpointing", "checkpointing", "sqrt", "activation checkpointing "
                             "of the repeated blocks in √L segments: less activation memory for some recomputation"),
    "accumulation": _switch("adaptive batching", "accumulation", "accumulation", "adaptive", "micro-batches "
                            "accumulated as the gradient noise grows (adaptive batching), lr scaled with them"),
    "complexity": _switch("complexity matching", "complexity", "complexity", "match", "start narrow and widen the "
                          "hidden layer while it helps (MLP)"),
    "trim_padding": _trim_padding,
    "threads": _threads,
    "processes": _processes,
}
# The techniques each generator covers, by their registered names (the test holds every registered one covered).
COVERS = {"precision": "precision", "schedule": "schedule", "compile": "compile", "checkpointing": "checkpointing",
          "accumulation": "accumulation", "complexity": "complexity"}


def candidates(baseline: dict[str, Any], machine: Machine) -> list[Candidate]:
    """Every candidate for this baseline and machine, applicable or not (those not carry the reason)."""
    return [c for generate in GENERATORS.values() for c in generate(baseline, machine)]
