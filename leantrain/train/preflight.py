"""Checks made before a run writes anything: the model takes the data, and the run's files are ours to write."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leantrain.data.batches import bucket_pad_index
from leantrain.data.streaming import head, to_device
from leantrain.errors import UsageError
from leantrain.fileio import clean_stale_temporaries, prepare_output_dir
from leantrain.techniques.amp import autocast_for
from leantrain.train import checkpoint
from leantrain.train.adapters import task_for
from leantrain.train.run_identity import check_existing, inside, run_lock

DRY_SAMPLES = 2


def dry_forward(model: nn.Module, dataset: Any, config: Any, precision: str = "fp32") -> None:
    """The data fit the task, and one forward, loss and backward on a tiny batch run, in eval mode with the RNG
    and gradients put back: each usual mistake (float or (N, 1) labels, labels outside the model's classes,
    a float64 model on float32 data, an output shape that broadcasts against the target) fails here in one
    line naming the fix, before any folder is made or any work done.

    The run calls it twice: on the model as built (in fp32: does it take the data?), and in the preflight on
    the model as it will train, in the run's ``precision`` (can this machine run it so?)."""
    task = task_for(dataset, config.label_smoothing)
    if config.length_buckets:
        bucket_pad_index(dataset)
    name = config.model if config.model and type(model).__module__.startswith("leantrain") else type(model).__name__
    custom_loss = getattr(task, "custom_loss", False)
    if not custom_loss:
        check_targets(dataset)
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


def check_targets(dataset: Any) -> None:
    """Targets of the right kind for the task, over the whole data set (labels in range on both splits)."""
    y, where = dataset.y_train, f"data {dataset.name}"
    if dataset.task == "classification":
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


@contextmanager
def run_files(out_dir: Path | None, run_name: str, *, resume: bool, force: bool) -> Iterator[Path | None]:
    """The run's checkpoint path, while this process holds the run's lock; None without a folder (or off rank 0).

    Under the lock: a killed writer's temporaries are removed, and a finished result or an interrupted run's
    checkpoint is refused unless resuming or forced."""
    if out_dir is None:
        yield None
        return
    prepare_output_dir(out_dir)  # only now: a bad data set or model never leaves an empty folder
    result = inside(out_dir, f"{run_name}.json")
    ckpt = inside(out_dir, f"{run_name}{checkpoint.SUFFIX}")
    with run_lock(out_dir, run_name):
        clean_stale_temporaries(out_dir, run_name)
        check_existing(result, ckpt, resume=resume, force=force)
        yield ckpt
