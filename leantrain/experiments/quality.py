"""Quality beside every speedup: a recipe's final metric against the baseline's, as seed 001 judged it.

Seed 001 accepted a faster recipe when its accuracy stayed "within ±0.5% of the baseline's". The delta is
shown both ways, absolute (metric units) and relative (of the baseline's value), with its direction
(better or worse, by whether the metric is higher- or lower-is-better), and the band is judged on the
relative delta. Only a worse result outside the band is flagged with ⚠: being better is never a problem.
"""
from __future__ import annotations

from dataclasses import dataclass

QUALITY_BAND = 0.005  # seed 001: ±0.5% of the baseline's value


@dataclass(frozen=True)
class QualityDelta:
    absolute: float  # recipe - baseline, in the metric's units
    relative: float | None  # absolute / |baseline|; None when the baseline is 0
    higher_is_better: bool
    band: float = QUALITY_BAND

    @property
    def direction(self) -> str:
        if self.absolute == 0:
            return "same"
        return "better" if (self.absolute > 0) == self.higher_is_better else "worse"

    @property
    def within_band(self) -> bool:
        if self.relative is None:
            return self.absolute == 0
        return abs(self.relative) <= self.band

    def render(self) -> str:
        """E.g. '-0.0120 (-1.45%) ▼ worse ⚠ outside ±0.5%' or '+0.0021 (+0.25%) ▲ better, within ±0.5%'."""
        arrow = {"better": "▲", "worse": "▼", "same": "="}[self.direction]
        relative = "n/a" if self.relative is None else f"{self.relative:+.2%}"
        band = f"±{self.band:.1%}".replace(".0%", "%")
        if self.within_band:
            verdict = f", within {band}"
        elif self.direction == "worse":
            verdict = f" ⚠ outside {band}"
        else:
            verdict = f", outside {band}"
        return f"{self.absolute:+.4f} ({relative}) {arrow} {self.direction}{verdict}"


def quality_delta(value: float, baseline: float, higher_is_better: bool, band: float = QUALITY_BAND) -> QualityDelta:
    delta = value - baseline
    return QualityDelta(delta, delta / abs(baseline) if baseline else None, higher_is_better, band)
