"""Progress output: a live bar with samples/s on a terminal; one line per epoch otherwise; silence when quiet.

Only rank 0 reports, so N workers print one line, not N; a log file gets no carriage-return floods.
"""
from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


class Progress:
    def __init__(self, *, quiet: bool = False, rank: int = 0, label: str = "", stream: Any = None):
        self.stream = stream or sys.stderr
        self.enabled = not quiet and rank == 0
        self.live = self.enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.label = label

    def epoch_bar(self, epoch: int, total_epochs: int, steps: int) -> _Bar:
        if not self.live:
            return _Bar(None)
        desc = f"{self.label} epoch {epoch + 1}/{total_epochs}".strip()
        return _Bar(tqdm(total=steps, desc=desc, unit="batch", file=self.stream, leave=False, dynamic_ncols=True))

    def epoch_done(self, record: dict[str, Any], metric: str) -> None:
        if not self.enabled:
            return
        value = record.get(metric)
        shown = f"{metric} {value:.4f}" if isinstance(value, float) else ""
        rate = record.get("samples_per_s")
        print(
            f"{self.label} epoch {record['epoch']}: train_loss {record['train_loss']:.4f} "
            f"val_loss {record['val_loss']:.4f} {shown} time {record['time_s']:.2f}s "
            f"{rate or 0:,.0f} samples/s".strip(),
            file=self.stream,
            flush=True,
        )

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)


class _Bar:
    def __init__(self, bar: tqdm | None):
        self.bar = bar
        self.samples = 0

    def update(self, batches: int, samples: int) -> None:
        if self.bar is None:
            return
        self.samples += samples
        self.bar.update(batches)
        elapsed = self.bar.format_dict["elapsed"]
        if elapsed > 0:
            self.bar.set_postfix_str(f"{self.samples / elapsed:,.0f} samples/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
