"""Checks made before a run writes anything: the model takes the data, and the run's files are ours to write."""
from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leantrain.data.batches import batch_too_large, bucket_pad_index
from leantrain.data.streaming import head, to_device
from leantrain.data.user import SAMPLE
from leantrain.errors import UsageError
from leantrain.fileio import prepare_output_dir
from leantrain.parallel.dist import Dist
from leantrain.parallel.env import detect
from leantrain.techniques.amp import autocast_for
from leantrain.train.adapters import select_output, task_for
from leantrain.train.run_identity import (
    FinishedRecord,
    check_existing,
    clean_run_temporaries,
    finished_record,
    inside,
    run_checkpoints,
    run_lock,
)

DRY_SAMPLES = 2


def dry_forward(model: nn.Module, dataset: Any, config: Any, precision: str = "fp32", check_data: bool = True) -> None:
    """The data fit the task, and one forward, loss and backward on a tiny batch run, in eval mode with the RNG
    and gradients put back: each usual mistake (float or (N, 1) labels, labels outside the model's classes,
    a float64 model on float32 data, an output shape that broadcasts against the target) fails here in one
    line naming the fix, before any folder is made or any work done.

    The run calls it twice: on the model as built (in fp32: does it take the data?), and in the preflight on
    the model as it will train, in the run's ``precision`` (can this machine run it so?), then with
    ``check_data=False``: the data were checked the first time (the inf/NaN scan reads every value)."""
    task = task_for(dataset, config.label_smoothing)
    if config.padding_trimmed_by:
        bucket_pad_index(dataset, config.padding_trimmed_by)
    name = config.model if config.model and type(model).__module__.startswith("leantrain") else type(model).__name__
    if config.padding_trimmed_by == "trim_padding":
        check_padding_invariant(model, name)
    custom_loss = getattr(task, "custom_loss", False)
    if check_data:
        if not custom_loss:
            check_targets(dataset)
        check_validation(dataset, targets=not custom_loss)
        check_batch(dataset, config)
    check_dtypes(model, dataset.x_train)
    x, y = head(dataset.x_train, DRY_SAMPLES), dataset.y_train[:DRY_SAMPLES]
    device = next((p.device for p in model.parameters()), y.device)
    x, y = to_device(x, device), y.to(device)
    rng, was_training = torch.get_rng_state(), model.training
    had_grad = [p.grad is not None for p in model.parameters()]
    model.eval()  # no dropout draws, no batch-norm statistics updated
    try:
        with autocast_for(device, precision):
            output = task.forward(model, x, y)
        if not custom_loss:
            select_output(output, None)  # a dict or tuple without output_key: say which key to give
            check_output(output, y, dataset)
        loss = task.loss_sum(output, y)
        if loss.requires_grad:
            loss.backward()
        elif any(p.requires_grad for p in model.parameters()):
            raise UsageError(f"model {name}: the loss does not depend on the model's parameters (is the output "
                             "detached, or an argmax?); return the raw scores from forward")
    except UsageError as e:
        raise UsageError(f"model {name} on data {dataset.name}: {e}") from None
    except (RuntimeError, IndexError, ValueError, TypeError, AttributeError, KeyError) as e:
        first_line = (str(e).strip().splitlines() or [""])[0][:160]
        how = f" in {precision}" if precision != "fp32" else ""
        raise UsageError(f"model {name} does not fit data {dataset.name}: a forward and backward pass on {DRY_SAMPLES} "
                         f"samples{how} failed ({type(e).__name__}: {first_line})") from None
    finally:
        for p, had in zip(model.parameters(), had_grad):
            if not had:
                p.grad = None
        model.train(was_training)
        torch.set_rng_state(rng)


def check_padding_invariant(model: nn.Module, name: str) -> None:
    """trim_padding promises the same losses at a batch's trimmed width, so it takes only a model that says so
    (``padding_invariant``): a recurrent encoder reads the padding, dropout draws its masks over the width."""
    if not getattr(model, "padding_invariant", False):
        raise UsageError(f"trim_padding needs a model whose outputs do not depend on the batch's padded width; model "
                         f"{name} does not declare padding_invariant (seq2seq-transformer with dropout 0 does; an LSTM "
                         "reads the padding): use length_buckets, or set padding_invariant = True on a model that masks it")


def check_targets(dataset: Any) -> None:
    """Targets of the right kind for the task, over the whole data set (labels in range on both splits)."""
    y, where = dataset.y_train, f"data {dataset.name}"
    if dataset.task == "classification":
        if math.prod(y.shape[1:]) > 1:  # rows, before the dtype: y.long() keeps them and squeeze(1) cannot
            raise UsageError(f"{where}: classification targets must be class indices of shape (N,), got (N, "
                             f"{', '.join(map(str, y.shape[1:]))}); {_rows_advice(y)}")
        if y.is_floating_point() or y.is_complex():
            raise UsageError(f"{where}: classification targets must be integer class indices, got {y.dtype}; "
                             "for real-valued targets use task='regression', for labels pass y.long()")
        if y.dim() != 1:
            raise UsageError(f"{where}: classification targets must have shape (N,), got (N, "
                             f"{', '.join(map(str, y.shape[1:]))}); pass y.squeeze(1) (or y.view(-1))")
        low = min(int(y.min()), int(dataset.y_val.min())) if len(dataset.y_val) else int(y.min())
        if low < 0:
            raise UsageError(f"{where}: class labels must be 0..C-1, got {low}; remap them (e.g. y - y.min())")
    elif dataset.task == "regression" and not y.is_floating_point():
        raise UsageError(f"{where}: regression targets must be floating point, got {y.dtype}; pass y.float()")


def is_one_hot(y: torch.Tensor) -> bool:
    """Rows of 0s and a single 1, one per sample (what F.one_hot and to_categorical give) over 2+ classes."""
    if y.dim() != 2 or y.shape[1] < 2 or y.numel() == 0 or y.is_complex():
        return False
    return bool(((y == 0) | (y == 1)).all()) and bool((y.sum(1) == 1).all())


def _rows_advice(y: torch.Tensor) -> str:
    """How to reach one class index a sample from targets holding a row (or more) per sample."""
    if is_one_hot(y):
        return "these are one-hot rows: pass y.argmax(1)"
    return ("pass one class index a sample (y.argmax(1) for per-class scores); several labels a sample need a "
            "loss_fn of your own, e.g. torch.nn.BCEWithLogitsLoss()")


def check_batch(dataset: Any, config: Any) -> None:
    """A given batch_size larger than the training split trains, said in one line (each rank's share is checked
    where the batches are made, data/batches.py; auto chooses within it). An iterable stream is counted only by
    reading it through: left out."""
    if not isinstance(config.batch_size, int) or (dataset.streams is not None and dataset.streams[0].iterable):
        return
    samples = len(dataset.streams[0]) if dataset.streams is not None else len(dataset.y_train)
    message = batch_too_large(config.batch_size, samples)
    if message and detect().rank == 0:  # every rank builds the data: one says it
        print(f"leantrain: warning: data {dataset.name}: {message}", file=sys.stderr, flush=True)


def check_validation(dataset: Any, *, targets: bool = True) -> None:
    """A validation split that can judge the run: enough samples, and no inf/NaN (a streamed split longer than
    its first batch is read only as training goes: the loop stops on a non-finite validation loss instead).
    ``targets``: the task's own loss reads them (a custom loss may mask NaN targets on purpose)."""
    check_val_size(dataset)
    if _whole_val_in_memory(dataset):
        check_finite(dataset.x_val, dataset.y_val if targets else None, "validation", f"data {dataset.name}")


def check_finite(x: Any, y: torch.Tensor | None, split: str, where: str) -> None:
    """No inf/NaN in a split's inputs (a tensor or a tuple/list/dict of them) or targets: one line with the counts.
    Training data is left to the guard (it stops at the first non-finite step, or skips it under skip mode)."""
    inputs, labels = _non_finite(x), _non_finite(y)
    if inputs or labels:
        found = " and ".join(f"{n} in the {what}" for n, what in ((inputs, "inputs"), (labels, "targets")) if n)
        raise UsageError(f"{where}: the {split} split holds non-finite values (inf/NaN): {found}; its loss would be "
                         f"NaN. Drop or fill those samples before training")


def _whole_val_in_memory(dataset: Any) -> bool:
    """Whether x_val/y_val are the whole validation split: a stream's hold its first batch of SAMPLE, so a shorter
    one is all of it."""
    return dataset.streams is None or len(dataset.y_val) < SAMPLE


NONFINITE_CHUNK = 1 << 24  # elements per pass: isfinite makes a bool copy, kept small on a large split


def _non_finite(value: Any) -> int:
    """How many elements of a tensor, or of a tuple/list/dict of tensors, are inf or NaN (integer tensors: none)."""
    if isinstance(value, torch.Tensor):
        if not (value.is_floating_point() or value.is_complex()) or value.numel() == 0:
            return 0
        rows = max(1, NONFINITE_CHUNK // max(1, value[0].numel())) if value.dim() else 1
        flat = value if value.dim() else value.reshape(1)
        return sum(int((~torch.isfinite(flat[i:i + rows])).sum()) for i in range(0, len(flat), rows))
    if isinstance(value, Mapping):
        return sum(_non_finite(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(_non_finite(v) for v in value)
    return 0


# The smallest validation split a run is allowed: below it, one sample moves the metric by over 10 points (the
# issue's 3-sample data set validated on 1 sample and reported accuracy 1.0). Eight is the suite's smallest
# deliberate split (32 samples at val_fraction 0.2, and an 8-sequence seq2seq split whose token count is large).
MIN_VAL_SAMPLES = 8
MIN_VAL_PER_CLASS = 2  # on average: below it, a class no validation sample holds goes unmeasured


def check_val_size(dataset: Any) -> None:
    """Refuse a validation split too small to say anything: fewer than MIN_VAL_SAMPLES samples, or (classification)
    fewer than MIN_VAL_PER_CLASS per class with a class seen in training but not once in validation."""
    n_val, where = len(dataset.y_val), f"data {dataset.name}"
    fix = "use more data, a larger val_fraction (a data spec option, or from_tensors(val_fraction=)) or an explicit " \
          "validation split (x_val=/y_val=, or val=(x_val, y_val))"
    if _whole_val_in_memory(dataset) and n_val < MIN_VAL_SAMPLES:
        raise UsageError(f"{where}: the validation split has {n_val} sample(s), fewer than {MIN_VAL_SAMPLES}: its "
                         f"loss and metric would be noise; {fix}")
    if dataset.task != "classification" or dataset.streams is not None or dataset.y_train.dim() != 1:
        return
    seen = torch.unique(dataset.y_train)
    missing = sorted(set(seen.tolist()) - set(torch.unique(dataset.y_val).tolist()))
    if missing and n_val < MIN_VAL_PER_CLASS * len(seen):
        shown = ", ".join(map(str, missing[:5])) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise UsageError(f"{where}: the validation split has {n_val} samples for {len(seen)} classes (fewer than "
                         f"{MIN_VAL_PER_CLASS} a class) and none of class{'es' if len(missing) > 1 else ''} {shown}: "
                         f"its metric would leave {'them' if len(missing) > 1 else 'it'} out; {fix}")


def check_dtypes(model: nn.Module, x: Any) -> None:
    """A model kept in a low precision, or in another float type than the data, fails deep inside a matmul."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if torch.float16 in dtypes or torch.bfloat16 in dtypes:
        low = "float16" if torch.float16 in dtypes else "bfloat16"
        raise UsageError(f"model {type(model).__name__} has {low} parameters: keep the model in float32 (model.float()) "
                         "and train in low precision with techniques=[lt.MixedPrecision('bf16')] or precision='bf16'")
    if isinstance(x, torch.Tensor) and x.is_floating_point() and dtypes and x.dtype not in dtypes:
        model_dtype = str(sorted(dtypes, key=str)[0]).removeprefix("torch.")
        data_dtype = str(x.dtype).removeprefix("torch.")
        raise UsageError(f"model {type(model).__name__} has {model_dtype} parameters but the inputs are {data_dtype}: "
                         f"convert one of them (model.to(torch.{data_dtype}) or x.to(torch.{model_dtype}))")


def check_output(output: Any, y: torch.Tensor, dataset: Any) -> None:
    """The model's output has the shape the task's loss expects: no silent broadcasting, enough classes."""
    if not isinstance(output, torch.Tensor):
        return
    if dataset.task == "classification":
        if output.dim() != 2:
            raise UsageError(f"classification needs outputs of shape (N, classes), got {tuple(output.shape)}")
        labels = max(int(dataset.y_train.max()), int(dataset.y_val.max()) if len(dataset.y_val) else 0) + 1
        if output.shape[1] < labels:
            raise UsageError(f"the model outputs {output.shape[1]} class scores but the labels go up to {labels - 1}: "
                             f"give the model's last layer {labels} outputs")
    elif dataset.task in ("regression", "reconstruction") and output.shape != y.shape:
        raise UsageError(f"{dataset.task} outputs of shape {tuple(output.shape)} against targets of shape "
                         f"{tuple(y.shape)} would broadcast: make them equal (y.view(-1, 1), or squeeze the output)")


REFUSED = "refused"  # what rank 0 sends the other ranks when it cannot take the run's files


@contextmanager
def run_files(out_dir: Path | None, run_name: str, ranks: Dist, *, resume: bool, force: bool
              ) -> Iterator[FinishedRecord | None]:
    """Rank 0 holds the run's lock (with a folder) for the whole block, taken before any rank reads the checkpoint;
    yields the run's record, on every rank, when resuming a finished run (nothing to train or write), else None.

    Rank 0 decides under the lock and the other ranks wait for its verdict before they read anything: a checkpoint it
    finds stale is gone before they look. (They read the run's settings before the process group met, so before it.)"""
    if out_dir is None:
        yield None
        return
    with ExitStack() as held:
        found: Any = None
        if ranks.is_main:
            try:
                found = held.enter_context(_own_files(out_dir, run_name, resume=resume, force=force))
            except BaseException:
                ranks.broadcast(REFUSED)  # the other ranks stop waiting: rank 0's error is the run's
                raise
        found = ranks.broadcast(found)
        if isinstance(found, str):
            raise UsageError("rank 0 refused to write the run (see its error)")
        yield found


@contextmanager
def _own_files(out_dir: Path, run_name: str, *, resume: bool, force: bool) -> Iterator[FinishedRecord | None]:
    """Rank 0's part: the lock; a killed writer's temporaries removed; a resumed finished run's record (its stale
    checkpoints removed, said in one line); else a finished result or an interrupted run's checkpoint refused unless
    resuming or forced. A folder made here holding nothing but the lock when the run fails is removed again."""
    made = not out_dir.exists()
    prepare_output_dir(out_dir)
    result = inside(out_dir, f"{run_name}.json")
    with run_lock(out_dir, run_name), _removed_if_unused(out_dir, run_name, made):
        clean_run_temporaries(out_dir, run_name)
        finished = finished_record(out_dir, run_name) if resume and not force else None
        if finished is not None:
            print(f"leantrain: {finished.message()}", file=sys.stderr)
        else:
            ckpts = run_checkpoints(out_dir, run_name)
            check_existing(result, ckpts[0] if ckpts else None, resume=resume, force=force)
        yield finished


@contextmanager
def _removed_if_unused(folder: Path, run_name: str, made: bool) -> Iterator[None]:
    """A bad data set, model or setting found under the lock leaves no empty folder behind (one made for this run)."""
    try:
        yield
    except BaseException:
        if made:
            remove_if_unused(folder, run_name)  # the lock still held: no other writer of the run can be inside
        raise


def remove_if_unused(folder: Path, run_name: str) -> None:
    """A folder made for a run that failed before writing anything but its lock: removed, lock and all."""
    lock = folder / f".{run_name}.lock"
    with suppress(OSError):  # the run's own error is the one to report
        if [p.name for p in folder.iterdir()] in ([lock.name], []):
            lock.unlink(missing_ok=True)
            folder.rmdir()
