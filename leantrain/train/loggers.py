"""Logs other tools read: TensorBoard event files, CSV and JSON lines, one row per optimizer step and per epoch.

``--log tensorboard,csv,jsonl`` picks the sinks; they write beside the run's record, on rank 0 only (the
other ranks get ``NO_LOG``, which does nothing). Per step: rank 0's mean loss over its share of the step,
the learning rate, the gradients' global norm (after fp16 unscaling, before clipping), the loss scale (fp16),
the micro-batches accumulated (k), samples/s (and tokens/s) since the previous step, all ranks counted.
Per epoch: the epoch's record (the scalars of it).

Values are kept on the device and read every ``FLUSH_EVERY`` steps and at each epoch's end, so logging adds
no host sync per step on CUDA (the loss scale, read every step under fp16, is the exception). Times are
taken on the host: on CUDA a step's rate is the rate work was queued at, equal to the device's on average.
On ``--resume`` the files are appended to; steps redone after the checkpoint appear again with the same
step number (TensorBoard shows the later value).
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import IO, Any

import torch

from leantrain._torch_private import foreach_norm
from leantrain.train.state import TrainState

FLUSH_EVERY = 50
STEP_FIELDS = ("step", "epoch", "loss", "lr", "grad_norm", "loss_scale", "accum_steps", "samples_per_s", "tokens_per_s")


class StepLog:
    """What the loop calls: ``start_epoch``, ``step`` before each optimizer step, ``end_epoch`` with the record."""

    def __init__(self, sinks: list[Sink], world_size: int = 1):
        self.sinks = sinks
        self.world_size = world_size  # ranks hold equal batches: rank 0's samples x world size = all of them
        self._pending: list[dict[str, Any]] = []
        self._last_time = time.perf_counter()

    def start_epoch(self) -> None:
        self._last_time = time.perf_counter()

    def step(self, state: TrainState, loss_sum: torch.Tensor, units: int, samples: int, tokens: int | None,
             accum_steps: int) -> None:
        # A shard's or a stage's gradients are part of the model's: their norm would be a wrong number (and the
        # whole norm needs every rank, while only rank 0 logs), so FSDP and pipelines log none.
        grads = [p.grad for p in state.model.parameters() if p.grad is not None] if state.plan.holds_whole_model else []
        now = time.perf_counter()
        seconds, self._last_time = now - self._last_time, now
        self._pending.append({
            "step": state.step + 1,
            "epoch": state.epoch + 1,
            "loss": loss_sum.detach() / max(units, 1),
            "lr": state.optimizer.param_groups[0]["lr"],
            "grad_norm": torch.linalg.vector_norm(torch.stack(foreach_norm(grads))) if grads else None,
            "loss_scale": state.precision.loss_scale(),
            "accum_steps": accum_steps,
            "samples_per_s": samples * self.world_size / seconds if seconds > 0 else None,
            "tokens_per_s": tokens * self.world_size / seconds if tokens and seconds > 0 else None,
        })
        if len(self._pending) >= FLUSH_EVERY:
            self.flush()

    def end_epoch(self, record: dict[str, Any]) -> None:
        self.flush()
        scalars = {k: v for k, v in record.items() if _is_number(v)}
        for sink in self.sinks:
            sink.epoch(int(record["epoch"]), scalars)
            sink.flush()

    def flush(self) -> None:
        rows, self._pending = self._pending, []
        held = [(row, key) for row in rows for key, value in row.items() if isinstance(value, torch.Tensor)]
        if held:  # one read of the device per flush, not one per value
            values = torch.stack([row[key].float() for row, key in held]).tolist()
            for (row, key), value in zip(held, values):
                row[key] = value
        for row in rows:
            for sink in self.sinks:
                sink.step(row)

    def close(self) -> None:
        self.flush()
        for sink in self.sinks:
            sink.close()


class NoLog(StepLog):
    """Ranks other than 0, and runs without ``--log``: nothing is measured or written."""

    def __init__(self) -> None:
        super().__init__([])

    def start_epoch(self) -> None: ...

    def step(self, state: TrainState, loss_sum: torch.Tensor, units: int, samples: int, tokens: int | None,
             accum_steps: int) -> None: ...

    def end_epoch(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


NO_LOG = NoLog()


class Sink:
    """Where rows go; each method does nothing unless a sink needs it."""

    def step(self, row: dict[str, Any]) -> None: ...

    def epoch(self, epoch: int, scalars: dict[str, float]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class CsvSink(Sink):
    """``<run>.steps.csv`` (STEP_FIELDS) and ``<run>.epochs.csv`` (the first epoch's scalar keys as columns)."""

    def __init__(self, folder: Path, run_name: str, append: bool):
        self._steps_path, self._epochs_path = folder / f"{run_name}.steps.csv", folder / f"{run_name}.epochs.csv"
        self._append = append
        self._steps, self._step_file = self._writer(self._steps_path, list(STEP_FIELDS))
        self._epochs: csv.DictWriter | None = None
        self._epoch_file: IO[str] | None = None

    def _writer(self, path: Path, fields: list[str]) -> tuple[csv.DictWriter, IO[str]]:
        fresh = not (self._append and path.exists() and path.stat().st_size > 0)
        if not fresh:  # resuming: keep the columns the file already has
            with path.open(newline="") as f:
                fields = next(csv.reader(f), fields)
        handle = path.open("w" if fresh else "a", newline="")
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        if fresh:
            writer.writeheader()
        return writer, handle

    def step(self, row: dict[str, Any]) -> None:
        self._steps.writerow(row)

    def epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        if self._epochs is None:
            self._epochs, self._epoch_file = self._writer(self._epochs_path, list(scalars))
        self._epochs.writerow(scalars)

    def flush(self) -> None:
        for handle in (self._step_file, self._epoch_file):
            if handle is not None:
                handle.flush()

    def close(self) -> None:
        for handle in (self._step_file, self._epoch_file):
            if handle is not None:
                handle.close()


class JsonlSink(Sink):
    """``<run>.log.jsonl``: one JSON object a line, ``{"kind": "step", ...}`` or ``{"kind": "epoch", ...}``."""

    def __init__(self, folder: Path, run_name: str, append: bool):
        self._file = (folder / f"{run_name}.log.jsonl").open("a" if append else "w")

    def step(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps({"kind": "step", **row}, allow_nan=True) + "\n")

    def epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        self._file.write(json.dumps({"kind": "epoch", **scalars}, allow_nan=True) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardSink(Sink):
    """Event files in ``tensorboard/<run>/``: ``step/<name>`` against the optimizer step, ``epoch/<key>``
    against the epoch. ``tensorboard --logdir <out>/tensorboard`` shows every run of a folder side by side."""

    def __init__(self, folder: Path, run_name: str, append: bool):
        from torch.utils.tensorboard import SummaryWriter  # optional: pip install 'leantrain[tensorboard]'

        self._writer = SummaryWriter(log_dir=str(folder / "tensorboard" / run_name))

    def step(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key not in ("step", "epoch") and value is not None:
                self._writer.add_scalar(f"step/{key}", value, global_step=row["step"])

    def epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            if key != "epoch":
                self._writer.add_scalar(f"epoch/{key}", value, global_step=epoch)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


SINKS: dict[str, type[Sink]] = {"tensorboard": TensorBoardSink, "csv": CsvSink, "jsonl": JsonlSink}


def open_log(names: list[str], folder: Path | None, run_name: str, *, is_main: bool, world_size: int,
             append: bool) -> StepLog:
    """The run's step log: the named sinks on rank 0, nothing elsewhere (or without names or a folder)."""
    if not names or folder is None or not is_main:
        return NO_LOG
    folder.mkdir(parents=True, exist_ok=True)
    sinks: list[Sink] = [SINKS[name](folder, run_name, append) for name in names]  # type: ignore[call-arg]
    return StepLog(sinks, world_size)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
