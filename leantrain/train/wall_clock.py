"""Where a run's wall time goes, from its process's start to its record: no time hides outside the record.

A run's epochs time training and validation; the rest of its wall time (imports, data, the ``auto`` probes, the
preflight, checkpoints, an ensemble's meta-learner, the record's own measurements) was nowhere, and once minutes
went there unseen (seed 003's ensemble: 5 min 45 s of wall time for 4.8 s of training). ``WallClock`` laps the
run's phases; ``summary`` splits the train phase by the epochs' own figures, and what is left is named as such.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def process_age_s() -> float | None:
    """Seconds since this process started (Linux's /proc; None elsewhere): its imports and set-up before the run."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def compile_time(epochs: list[dict[str, Any]]) -> float:
    """Seconds the epochs spent in torch.compile's compilations, training and validation (0 in older records)."""
    return sum((e.get("compile_s") or 0.0) + (e.get("val_compile_s") or 0.0) for e in epochs)


class WallClock:
    """Laps of a run's phases (``begin``), and parts carved out of them (``part``)."""

    def __init__(self) -> None:
        self.before_run_s = process_age_s()
        self.start = self._mark = time.monotonic()
        self._phase: str | None = None
        self.parts: dict[str, float] = {}

    def begin(self, phase: str) -> None:
        """End the current phase's lap and start ``phase``'s."""
        self._lap()
        self._phase = phase

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Time spent inside counts to ``name``, not to the phase around it."""
        self._lap()
        try:
            yield
        finally:
            now = time.monotonic()
            self.parts[name] = self.parts.get(name, 0.0) + now - self._mark
            self._mark = now

    def _lap(self) -> None:
        now = time.monotonic()
        if self._phase is not None:
            self.parts[self._phase] = self.parts.get(self._phase, 0.0) + now - self._mark
        self._mark = now

    def summary(self, epochs: list[dict[str, Any]]) -> dict[str, Any]:
        """The run's wall time so far and its parts, in seconds; the train phase split into training, validation,
        torch.compile's compilations, an ensemble's meta-learner and the rest (checkpoints, logs, epoch bookkeeping)."""
        self._lap()
        parts = dict(self.parts)
        train = parts.pop("train", 0.0)
        training = sum(e.get("member_time_s", e.get("time_s")) or 0.0 for e in epochs)  # an ensemble's: its member's
        validation = sum(e.get("val_time_s") or 0.0 for e in epochs)
        meta = sum((e.get("ensemble") or {}).get("stacking_s") or 0.0 for e in epochs)
        compiling = compile_time(epochs)
        # A resumed run's epochs include time spent before the interruption: the rest is never below zero.
        parts.update(training=training, validation=validation, compile=compiling, meta_learner=meta,
                     checkpoints_and_other=max(0.0, train - training - validation - compiling - meta))
        run_s = time.monotonic() - self.start
        total = run_s + (self.before_run_s or 0.0)
        return {"total_s": round(total, 3), "before_run_s": None if self.before_run_s is None else round(self.before_run_s, 3),
                "parts_s": {name: round(seconds, 3) for name, seconds in parts.items()}}
