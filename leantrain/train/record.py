"""A run's record: the JSON document described in docs/ARCHITECTURE.md, and the summary derived from its epochs."""
from __future__ import annotations

import socket
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from leantrain import models
from leantrain.config import RunConfig
from leantrain.data.dataset import Dataset
from leantrain.machine import cpu_name, machine_facts
from leantrain.techniques import Technique
from leantrain.train.allocator import allocator_setting
from leantrain.train.metrics import matmul_peaks, peak_matmul_flops, training_utilisation
from leantrain.train.state import TrainState
from leantrain.train.wall_clock import compile_time

SCHEMA = 1


def time_to_target(epochs: list[dict[str, Any]], metric: str, target: float | None, higher_is_better: bool = True) -> float | None:
    """Training seconds (sum of epoch ``time_s``) until the first epoch whose metric reaches the target.

    Validation time is left out: it is the same work whatever the training recipe, and the seeds
    report training time. So is torch.compile's compilation (``compile_s``, recorded apart): a cost paid once per
    process, not training speed. None when the target is never reached (or not given).
    """
    if target is None:
        return None
    elapsed = 0.0
    for epoch in epochs:
        elapsed += epoch["time_s"]
        value = epoch.get(metric)
        if value is not None and (value >= target if higher_is_better else value <= target):
            return elapsed
    return None


def summarize(epochs: list[dict[str, Any]], metric: str, target: float | None, higher_is_better: bool) -> dict[str, Any]:
    values = [e[metric] for e in epochs if e.get(metric) is not None]
    best = (max if higher_is_better else min)(values) if values else None
    utilisation = [e["utilisation"] for e in epochs if e.get("utilisation") is not None]
    rates = [e["samples_per_s"] for e in epochs if e.get("samples_per_s")]
    compiling = compile_time(epochs)
    return {
        "total_time_s": sum(e["time_s"] + e["val_time_s"] for e in epochs) + compiling,
        "train_time_s": sum(e["time_s"] for e in epochs),
        "compile_s": compiling,
        "target": target,
        "time_to_target_s": time_to_target(epochs, metric, target, higher_is_better),
        f"best_{metric}": best,
        f"final_{metric}": values[-1] if values else None,
        "final_val_loss": epochs[-1]["val_loss"] if epochs else None,
        "mean_epoch_time_s": sum(e["time_s"] for e in epochs) / len(epochs) if epochs else None,
        "median_samples_per_s": sorted(rates)[len(rates) // 2] if rates else None,
        "peak_mem_bytes": max((e["peak_mem_bytes"] for e in epochs), default=None),
        "utilisation": sum(utilisation) / len(utilisation) if utilisation else None,
    }


def environment(device: torch.device, peak_flops: float | None, by_dtype: bool = True) -> dict[str, Any]:
    """The machine a run ran on. ``by_dtype``: measure every dtype's matmul peak (seconds when not cached; a
    rank whose record is not written skips it, so that N ranks do not measure at once and disturb each other)."""
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = cpu_name()
    return {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "device": str(device),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "allocator": allocator_setting(),
        "hostname": socket.gethostname(),
        "git_commit": _git_commit(),
        "peak_flops": peak_flops,  # utilisation's divisor: the run's dtype's peak, never below fp32's
        "peak_flops_by_dtype": matmul_peaks(device) if by_dtype else None,
        **machine_facts(device),
    }


@lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """The code's commit, with "+dirty" when the working tree differs from it (the figures are then not
    reproducible from the commit alone)."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0 or not head.stdout.strip():
        return None
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def make_record(
    config: RunConfig, state: TrainState, dataset: Dataset, techniques: list[Technique], extra: dict[str, Any],
    written: bool = True,
) -> dict[str, Any]:
    flops = models.flops_per_sample(state.model)
    peak = peak_matmul_flops(state.device, state.precision.compute_dtype) if flops else None
    # Rates are global over the ranks, so the capacity is every rank's peak (each measured at its thread count).
    capacity = peak * state.dist.world_size if peak else None
    for epoch in state.records:
        # Sequence models declare FLOPs per token, the others per sample; a resized model, per epoch.
        rate = epoch.get("train_tokens_per_s") or epoch.get("samples_per_s")
        epoch_flops = epoch.get("flops_per_sample") or flops
        epoch["utilisation"] = (training_utilisation(epoch_flops, rate, capacity)
                                if epoch_flops and capacity and rate else None)
    task = state.task
    return {
        "schema": SCHEMA,
        "run": {
            "name": config.run_name,
            "model": config.model,
            "data": dataset.name,
            "data_spec": config.data,
            "task": dataset.task,
            "metric": task.metric,
            "higher_is_better": task.higher_is_better,
            "techniques": [t.describe() for t in techniques],
            "parallel": config.parallel,
            "world_size": state.dist.world_size,
            "procs_per_node": state.dist.world.local_world_size,
            "nodes": state.dist.world.nodes,
            "launcher": state.dist.world.launcher,
            "backend": state.dist.backend,
            "seed": config.seed,
            "params": sum(p.numel() for p in state.model.parameters()),
            "flops_per_sample": flops,
            "train_samples": len(dataset.x_train),
            "val_samples": len(dataset.x_val),
            "config": config.to_dict(),
            **extra,
        },
        "env": environment(state.device, peak, by_dtype=written),
        "epochs": state.records,
        "summary": summarize(state.records, task.metric, config.target, task.higher_is_better),
    }
