"""What this machine is (CPU model, instruction sets, cores) and how many of its cores are free right now.

Machines of one "kind" differ: an AMX Xeon, an AVX-512 BF16 EPYC and an AVX2-only EPYC run the same bf16
model at ~6x, ~2x and ~1/6x of fp32's speed. Every measured figure is recorded with these facts, and
every tuned choice is cached under them.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

# /proc/cpuinfo flags that decide low-precision speed on a CPU (bf16 and fp16 dot products, AMX tiles).
PRECISION_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_tile")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def kernel_isa() -> str:
    """The instruction sets the CPU kernels may use here: PyTorch's capability (ATEN_CPU_CAPABILITY lowers it) and
    oneDNN's cap when one is set. One CPU capped to AVX2 is another machine: its figures must not mix."""
    try:
        isa = str(torch.backends.cpu.get_cpu_capability())
    except AttributeError:  # PyTorch < 2.1
        isa = "unknown"
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return f"{isa}|onednn<={cap}" if cap else isa


def cpu_capability() -> str:
    """The instruction set PyTorch's own kernels use (e.g. AVX2, AVX512); ATEN_CPU_CAPABILITY can lower it."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except AttributeError:  # PyTorch < 2.1
        return "unknown"


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The precision-relevant flags the CPU reports (what the hardware has, whatever PyTorch uses)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return [f for f in PRECISION_FLAGS if f in present]
    return []


def usable_cpus() -> list[int]:
    """The logical CPUs this process may run on (its affinity; a container or taskset narrows it)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def machine_key(device: torch.device) -> str:
    """What a tuned choice depends on besides the model: the device, its instruction set, threads, torch."""
    if device.type == "cuda":
        return f"cuda|{device_name(device)}|torch={torch.__version__}"
    return f"cpu|{cpu_name()}|{kernel_isa()}|threads={torch.get_num_threads()}|torch={torch.__version__}"


def machine_facts(device: torch.device) -> dict[str, Any]:
    """For a run's ``env``: the CPU line, capability, flags and core count (and the GPU's name on CUDA)."""
    facts: dict[str, Any] = {
        "cpu_model": cpu_name(),
        "cpu_capability": cpu_capability(),
        "cpu_flags": cpu_flags(),
        "cpu_cores": len(usable_cpus()),
    }
    if device.type == "cuda":
        facts["gpu"] = device_name(device)
    return facts


def _busy_ticks(cpus: list[int], stat: str) -> int:
    """Non-idle jiffies of the given logical CPUs, from the per-CPU lines of /proc/stat."""
    wanted = {f"cpu{i}" for i in cpus}
    total = 0
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] in wanted:
            total += sum(int(v) for i, v in enumerate(fields[1:9]) if i not in (3, 4))  # minus idle, iowait
    return total


def _own_ticks() -> int:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:13])  # utime, stime


def busy_cores(cpus: list[int], interval_s: float = 0.2) -> float | None:
    """Mean cores of ``cpus`` that *other* processes kept busy over ``interval_s`` (None where /proc is absent).

    Only our own CPUs count: on a big machine, load on cores we may not use takes nothing from us.
    """
    try:
        start = (_busy_ticks(cpus, Path("/proc/stat").read_text()), _own_ticks(), time.monotonic())
        time.sleep(interval_s)
        end = (_busy_ticks(cpus, Path("/proc/stat").read_text()), _own_ticks(), time.monotonic())
    except (OSError, ValueError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return max(0.0, ((end[0] - start[0]) - (end[1] - start[1])) / ticks / (end[2] - start[2]))


def free_threads(cpus: int, busy: float | None) -> int:
    """Threads to use: our CPUs minus those others keep busy, rounded, at least one.

    One busy neighbour on 2 cores made 2-thread PyTorch collapse (matmul 351 -> 5 GFLOP/s): a thread that
    must share its core stalls the others at every parallel region's barrier.
    """
    return max(1, round(cpus - (busy or 0.0)))
