"""What a report says about the machine (so every figure is read with the hardware it holds on) and about
the choices ``auto`` settings made on it."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

KNOBS = ("precision", "optimizer", "threads", "batch_size")


def machine_line(env: dict[str, Any]) -> str:
    """E.g. 'CPU: Intel Xeon …; PyTorch capability AVX512; flags avx2 avx512_bf16; 2 cores; matmul peak fp32 …'."""
    parts = []
    if env.get("cpu_model"):
        parts.append(f"CPU: {env['cpu_model']}")
    if env.get("gpu"):
        parts.append(f"GPU: {env['gpu']}")
    if env.get("cpu_capability"):
        parts.append(f"PyTorch CPU capability {env['cpu_capability']}")
    if env.get("cpu_flags") is not None:
        parts.append("flags " + (" ".join(env["cpu_flags"]) or "none of avx2/avx512/amx"))
    if env.get("cpu_cores"):
        parts.append(f"{env['cpu_cores']} usable cores")
    peaks = env.get("peak_flops_by_dtype") or {}
    if peaks:
        shown = ", ".join(f"{name} {value / 1e9:,.0f}" for name, value in peaks.items() if value)
        parts.append(f"measured matmul peak GFLOP/s: {shown} (utilisation divides by the run's dtype's peak, "
                     "never below fp32's)")
    return "; ".join(parts) + "." if parts else ""


def autotune_lines(runs: list[dict[str, Any]]) -> list[str]:
    """One line per recipe whose runs had auto settings: what each knob resolved to (and how often)."""
    choices: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for run in runs:
        tuned = run["run"].get("autotune") or {}
        recipe = run["run"].get("recipe", run["run"]["name"])
        for knob in KNOBS:
            if knob in tuned:
                choices[recipe][knob][str(tuned[knob]["choice"])] += 1
    lines = []
    for recipe, knobs in choices.items():
        said = "; ".join(
            f"{knob} auto -> " + ", ".join(c + (f" ({n} run{'s' * (n > 1)})" if len(counts) > 1 else "") for c, n in counts.items())
            for knob, counts in knobs.items()
        )
        lines.append(f"Recipe {recipe}, measured on this machine: {said} (per-run timings in each JSON's run.autotune).")
    return lines
