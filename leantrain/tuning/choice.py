"""Choosing among measured alternatives: the fastest whose loss stays with the reference's, never a diverging one.

Pure functions of measurements, so the rule is tested with injected timings and no clock.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

# A lower precision may end its probe a little off fp32's loss (rounding), not far off (overflow, divergence).
LOSS_RTOL = 0.05
LOSS_ATOL = 0.02
# A non-reference alternative must beat the reference by this much to be chosen: within timing noise,
# keep the reference (fp32 needs no trust in rounding; torch's default Adam is what users expect).
MARGIN = 0.03


@dataclass
class Trial:
    """One alternative's measurement: milliseconds per step in each interleaved round, and its loss after them."""
    ms_per_step: list[float] = field(default_factory=list)
    loss: float | None = None  # None: no quality check applies (e.g. optimizer kernels of one update rule)
    skipped: str | None = None  # why it was not measured (or measured only in warm-up)

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.ms_per_step) if self.ms_per_step else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ms_per_step": self.median_ms}
        if len(self.ms_per_step) > 1:
            out["ms_range"] = [min(self.ms_per_step), max(self.ms_per_step)]
        if self.loss is not None:
            out["loss"] = self.loss
        if self.skipped:
            out["skipped"] = self.skipped
        return out


def loss_ok(loss: float | None, reference: float | None) -> bool:
    """Finite, and within tolerance of the reference's loss when both are known."""
    if loss is None:
        return True
    if not math.isfinite(loss):
        return False
    if reference is None or not math.isfinite(reference):
        return True
    return abs(loss - reference) <= LOSS_RTOL * abs(reference) + LOSS_ATOL


def choose(trials: dict[str, Trial], reference: str, margin: float = MARGIN) -> tuple[str, dict[str, str]]:
    """The chosen alternative, and why each other one was not chosen.

    Eligible: measured (not skipped), with a finite loss within tolerance of the reference's. The
    reference is chosen when nothing eligible is ``margin`` faster, and whenever it is itself unusable
    (no measurement, or a loss that diverged: then no alternative's loss can be judged).
    """
    ref = trials[reference]
    ref_ms, ref_loss = ref.median_ms, ref.loss
    rejected: dict[str, str] = {}
    if ref.skipped or ref_ms is None or (ref_loss is not None and not math.isfinite(ref_loss)):
        why = ref.skipped or ("not measured" if ref_ms is None else f"loss {ref_loss}")
        return reference, {name: f"{reference} unusable ({why}): kept as the safe default" for name in trials if name != reference}
    best, best_ms = reference, ref_ms * (1.0 - margin)
    for name, trial in trials.items():
        if name == reference:
            continue
        ms = trial.median_ms
        if trial.skipped:
            rejected[name] = trial.skipped
        elif ms is None:
            rejected[name] = "not measured"
        elif not loss_ok(trial.loss, ref_loss):
            rejected[name] = f"loss {trial.loss:.4g} vs {reference} {ref_loss:.4g}: outside tolerance"
        elif ms < best_ms:
            if best != reference:
                rejected[best] = f"slower than {name}"
            best, best_ms = name, ms
        else:
            rejected[name] = f"not faster than {best} by {margin:.0%}" if best == reference else f"slower than {best}"
    if best != reference:
        rejected[reference] = f"slower than {best}"
    return best, rejected


# batch_size auto takes the smallest batch within this share of the best samples/s: beyond the knee a doubled
# batch buys little speed and halves the optimizer steps an epoch takes.
KNEE = 0.90


def choose_batch(trials: dict[int, Trial], knee: float = KNEE) -> tuple[int, dict[str, str]]:
    """The smallest measured batch whose samples/s is at least ``knee`` of the best; why each other was not."""
    rates = {b: b / t.median_ms for b, t in trials.items() if not t.skipped and t.median_ms}
    if not rates:
        raise ValueError("no batch size was measured")
    best = max(rates.values())
    choice = min(b for b, rate in rates.items() if rate >= knee * best)
    rejected = {}
    for batch, trial in trials.items():
        if batch == choice:
            continue
        if batch not in rates:
            rejected[str(batch)] = trial.skipped or "not measured"
        elif batch < choice:
            rejected[str(batch)] = f"{rates[batch] / best:.0%} of the best samples/s (under {knee:.0%})"
        else:
            rejected[str(batch)] = f"{rates[batch] / rates[choice]:.2f}x {choice}'s samples/s: fewer steps, little speed"
    return choice, rejected


def lr_rule(optimizer: str) -> str:
    """How the lr follows the batch: linearly for SGD (Goyal et al. 2017), by the square root for Adam (Malladi
    et al. 2022, square-root scaling for adaptive methods)."""
    return "linear" if optimizer == "sgd" else "square root"


def scaled_lr(lr: float, batch: int, lr_batch: int, optimizer: str) -> float:
    """``lr`` (meant for batch ``lr_batch``) at ``batch``, by ``lr_rule``."""
    ratio = batch / lr_batch
    return lr * (ratio if lr_rule(optimizer) == "linear" else math.sqrt(ratio))
