"""Logs other tools read: TensorBoard event files, CSV and JSON lines, one row per optimizer step and per epoch.

``--log tensorboard,csv,jsonl`` picks the sinks; they write beside the run's record, on rank 0 only (the
other ranks get ``NO_LOG``, which does nothing). Per step: rank 0's mean loss over its share of the step,
the learning rate, the gradients' global norm (after fp16 unscaling, before clipping), the loss scale (fp16),
the micro-batches accumulated (k), samples/s (and tokens/s) since the previous step, all ranks counted.
Per epoch: the epoch's record (the scalars of it).

Values are kept on the device and read every ``FLUSH_EVERY`` steps and at each epoch's end, so logging adds
no host sync per step on CUDA (the loss scale, read every step under fp16, is the exception). Times are
taken on the host: on CUDA a step's rate is the rate work was queued at, equal to the device's on average.

Every checkpoint is preceded by ``flush``, which writes and fsyncs every step up to it: a kill -9 loses no
row the checkpoint covers. On ``--resume`` the CSV and JSON lines files are cut back to the checkpoint's
step before they are appended to: rows of later steps, epochs not finished by then, a trailing line a kill
or a full disk cut short, and anything else that does not parse are dropped, so the resumed files hold
each step and epoch once, in order. TensorBoard's event files cannot be cut: its step scalars after the
checkpoint are hidden (``purge_step``), but an epoch redone after the checkpoint shows its later value.
A write that fails (a full disk) ends the run with one line naming the file.
"""
from __future__ import annotations

import csv
import errno
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import torch

from leantrain._torch_private import foreach_norm
from leantrain.errors import UsageError
from leantrain.fileio import write_atomic
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
            self._write_pending()

    def end_epoch(self, record: dict[str, Any]) -> None:
        self._write_pending()
        scalars = {k: v for k, v in record.items() if _is_number(v)}
        for sink in self.sinks:
            sink.epoch(int(record["epoch"]), scalars)
        self.flush()

    def flush(self) -> None:
        """Every pending row written and on disk: called before each checkpoint, so that a kill after it
        loses no step the checkpoint holds (a resume would find a gap)."""
        self._write_pending()
        for sink in self.sinks:
            sink.flush()

    def _write_pending(self) -> None:
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
        try:
            self.flush()
        finally:  # the handles go even when the last write failed (that failure is the one reported)
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
    """Where rows go; each method does nothing unless a sink needs it. A sink is built with
    ``(folder, run_name, append, resume_step)``: appending on resume, cut back to ``resume_step`` first."""

    def step(self, row: dict[str, Any]) -> None: ...

    def epoch(self, epoch: int, scalars: dict[str, float]) -> None: ...

    def flush(self) -> None:
        """Everything written so far is on disk (a kill -9 right after loses none of it)."""

    def close(self) -> None: ...


class CsvSink(Sink):
    """``<run>.steps.csv`` (STEP_FIELDS) and ``<run>.epochs.csv`` (the first epoch's scalar keys as columns)."""

    def __init__(self, folder: Path, run_name: str, append: bool, resume_step: int | None = None):
        self._steps_path, self._epochs_path = folder / f"{run_name}.steps.csv", folder / f"{run_name}.epochs.csv"
        self._append = append
        if append:
            _cut_csv(self._steps_path, Resumed(resume_step).keeps_step)
            _cut_csv(self._epochs_path, Resumed(resume_step).keeps_epoch)
        self._steps, self._step_file = self._writer(self._steps_path, list(STEP_FIELDS))
        self._epochs: csv.DictWriter | None = None
        self._epoch_file: IO[str] | None = None

    def _writer(self, path: Path, fields: list[str]) -> tuple[csv.DictWriter, IO[str]]:
        fresh = not (self._append and path.exists() and path.stat().st_size > 0)
        with _writing(path):
            if not fresh:  # resuming: keep the columns the file already has
                with path.open(newline="") as f:
                    fields = next(csv.reader(f), fields)
            handle = path.open("w" if fresh else "a", newline="")
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            if fresh:
                writer.writeheader()
        return writer, handle

    def step(self, row: dict[str, Any]) -> None:
        with _writing(self._steps_path):
            self._steps.writerow(row)

    def epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        if self._epochs is None:
            self._epochs, self._epoch_file = self._writer(self._epochs_path, list(scalars))
        with _writing(self._epochs_path):
            self._epochs.writerow(scalars)

    def flush(self) -> None:
        _sync(self._step_file, self._steps_path)
        if self._epoch_file is not None:
            _sync(self._epoch_file, self._epochs_path)

    def close(self) -> None:
        for handle in (self._step_file, self._epoch_file):
            if handle is not None:
                _close(handle)


class JsonlSink(Sink):
    """``<run>.log.jsonl``: one JSON object a line, ``{"kind": "step", ...}`` or ``{"kind": "epoch", ...}``."""

    def __init__(self, folder: Path, run_name: str, append: bool, resume_step: int | None = None):
        self._path = folder / f"{run_name}.log.jsonl"
        if append:
            _cut_jsonl(self._path, Resumed(resume_step))
        with _writing(self._path):
            self._file = self._path.open("a" if append else "w")

    def step(self, row: dict[str, Any]) -> None:
        with _writing(self._path):
            self._file.write(json.dumps({"kind": "step", **row}, allow_nan=True) + "\n")

    def epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        with _writing(self._path):
            self._file.write(json.dumps({"kind": "epoch", **scalars}, allow_nan=True) + "\n")

    def flush(self) -> None:
        _sync(self._file, self._path)

    def close(self) -> None:
        _close(self._file)


class TensorBoardSink(Sink):
    """Event files in ``tensorboard/<run>/``: ``step/<name>`` against the optimizer step, ``epoch/<key>``
    against the epoch. ``tensorboard --logdir <out>/tensorboard`` shows every run of a folder side by side."""

    def __init__(self, folder: Path, run_name: str, append: bool, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter  # optional: pip install 'leantrain[tensorboard]'

        self._folder = folder / "tensorboard" / run_name
        # Event files cannot be cut back; TensorBoard hides the earlier files' events from purge_step on.
        purge = resume_step + 1 if append and resume_step is not None else None
        with _writing(self._folder):
            self._writer = SummaryWriter(log_dir=str(self._folder), purge_step=purge)

    def step(self, row: dict[str, Any]) -> None:
        with _writing(self._folder):
            for key, value in row.items():
                if key not in ("step", "epoch") and value is not None:
                    self._writer.add_scalar(f"step/{key}", value, global_step=row["step"])

    def epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        with _writing(self._folder):
            for key, value in scalars.items():
                if key != "epoch":
                    self._writer.add_scalar(f"epoch/{key}", value, global_step=epoch)

    def flush(self) -> None:
        with _writing(self._folder):
            self._writer.flush()

    def close(self) -> None:
        with _writing(self._folder):
            self._writer.close()


SINKS: dict[str, type[Sink]] = {"tensorboard": TensorBoardSink, "csv": CsvSink, "jsonl": JsonlSink}


def open_log(names: list[str], folder: Path | None, run_name: str, *, is_main: bool, world_size: int,
             append: bool, resume_step: int | None = None) -> StepLog:
    """The run's step log: the named sinks on rank 0, nothing elsewhere (or without names or a folder).
    ``append`` continues the files (a resume), first cut back to ``resume_step``, the checkpoint's step."""
    if not names or folder is None or not is_main:
        return NO_LOG
    folder.mkdir(parents=True, exist_ok=True)
    sinks: list[Sink] = [SINKS[name](folder, run_name, append, resume_step)  # type: ignore[call-arg]
                         for name in names]
    return StepLog(sinks, world_size)


class Resumed:
    """Which rows of a log a resume keeps: those the checkpoint at ``resume_step`` holds (None: every row),
    each step and each epoch once and in order (a file an older leantrain appended to may repeat some)."""

    def __init__(self, resume_step: int | None):
        self.limit = math.inf if resume_step is None else resume_step
        self.last_step = self.epochs = self.epochs_end_step = 0

    def keeps_step(self, row: dict[str, Any]) -> bool:
        step = _whole(row.get("step"))
        if step is None or not self.last_step < step <= self.limit:
            return False
        self.last_step = step
        return True

    def keeps_epoch(self, row: dict[str, Any]) -> bool:
        """An epoch is kept when it ended by the checkpoint: its steps and those before it add up to no more."""
        epoch, steps = _whole(row.get("epoch")), _whole(row.get("train_steps"))
        if epoch != self.epochs + 1 or steps is None or self.epochs_end_step + steps > self.limit:
            return False
        self.epochs, self.epochs_end_step = epoch, self.epochs_end_step + steps
        return True

    def keeps_json(self, row: dict[str, Any] | None) -> bool:
        if row is None:
            return False
        if row.get("kind") == "step":
            return self.keeps_step(row)
        return row.get("kind") == "epoch" and self.keeps_epoch(row)


def _cut_csv(path: Path, keeps: Callable[[dict[str, str]], bool]) -> None:
    """Its header, then the complete rows ``keeps`` accepts (a row of another width is a damaged one)."""
    data, lines = _complete_lines(path)
    header = _cells(lines[0]) if lines else None
    if not header:  # nothing usable: the sink starts the file afresh
        _rewrite(path, data, [])
        return
    rows = [line for line in lines[1:] if (cells := _cells(line)) is not None and len(cells) == len(header)
            and keeps(dict(zip(header, cells)))]
    _rewrite(path, data, [lines[0], *rows])


def _cut_jsonl(path: Path, resumed: Resumed) -> None:
    data, lines = _complete_lines(path)
    _rewrite(path, data, [line for line in lines if resumed.keeps_json(_json_object(line))])


def _complete_lines(path: Path) -> tuple[bytes, list[bytes]]:
    """The file's bytes and its complete lines; a last line without its newline was cut short, and is left out."""
    with _writing(path):
        data = path.read_bytes() if path.exists() else b""
    *lines, _cut_short = data.split(b"\n")
    return data, lines


def _rewrite(path: Path, data: bytes, lines: list[bytes]) -> None:
    kept = b"".join(line + b"\n" for line in lines)
    if kept != data:
        with _writing(path):
            write_atomic(path, kept)  # a kill during the cut leaves the old file whole, to be cut again


def _cells(line: bytes) -> list[str] | None:
    try:
        return next(csv.reader([line.decode().removesuffix("\r")]), [])
    except (UnicodeDecodeError, csv.Error):
        return None


def _json_object(line: bytes) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except ValueError:  # UnicodeDecodeError is one too
        return None
    return row if isinstance(row, dict) else None


def _whole(value: Any) -> int | None:
    """A step or epoch number, from a CSV cell ("12") or JSON (12); None for anything else."""
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A failed write ends the run with one line naming the file, as a full disk does for every other file."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UsageError(f"no space left on the device writing {path}") from None
        raise UsageError(f"cannot write {path} ({e.strerror or e})") from None


def _sync(handle: IO[str], path: Path) -> None:
    with _writing(path):
        handle.flush()
        os.fsync(handle.fileno())


def _close(handle: IO[str]) -> None:
    # StepLog.close flushed first, and reported a failure then; the handle must go regardless.
    with suppress(OSError):
        handle.close()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
