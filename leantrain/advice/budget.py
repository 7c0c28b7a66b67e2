"""The time a user gives ``leantrain advise``: parsed at the edge, then spent run by run.

A budget is wall-clock time for the whole advice, screening and every measured run included. It is kept by
planning: no run starts unless its expected cost (the baseline's measured wall time, times the candidate's
expected ratio) fits in what is left, so the advice ends within the budget plus at most one run's overrun.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from leantrain.errors import UsageError

_PART = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_budget(text: str | float | int) -> float:
    """Seconds from '15m', '90s', '1h30m', '2.5m' or a number of seconds; a one-line UsageError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    elif isinstance(text, str):
        spec = text.strip().lower().replace(" ", "")
        parts = _PART.findall(spec)
        if not spec or "".join(a + b for a, b in parts) != spec:
            if re.fullmatch(r"\d+(?:\.\d+)?", spec):
                parts = [(spec, "s")]
            else:
                raise UsageError(f"budget {text!r} is not a duration; give e.g. 15m, 90s, 1h30m or seconds")
        seconds = sum(float(value) * _UNIT_S[unit] for value, unit in parts)
    else:
        raise UsageError(f"budget {text!r} is not a duration; give e.g. 15m, 90s, 1h30m or seconds")
    if not seconds > 0:
        raise UsageError(f"budget {text!r} must be more than 0 seconds")
    return seconds


def render_seconds(seconds: float) -> str:
    """'4 min 05 s', '38 s', '1.2 s'."""
    if seconds >= 60:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest:02d} s"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


@dataclass
class Budget:
    """Wall-clock seconds for the whole advice, counted from ``start`` (the clock is injectable for tests)."""

    seconds: float
    clock: object = field(default=time.monotonic, repr=False)
    start: float = field(default=-1.0)

    def __post_init__(self) -> None:
        if self.start < 0:
            self.start = self.now()

    def now(self) -> float:
        return float(self.clock())  # type: ignore[operator]

    @property
    def spent(self) -> float:
        return self.now() - self.start

    @property
    def left(self) -> float:
        return self.seconds - self.spent

    def fits(self, cost: float) -> bool:
        """Whether a run expected to take ``cost`` seconds ends inside the budget."""
        return cost <= self.left
