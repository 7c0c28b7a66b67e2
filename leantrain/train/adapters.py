"""A user's loss, metrics and model conventions, fitted onto a task (``leantrain.tasks``) without changing it.

- ``loss_fn``: a name the task knows (regression: "mse", "l1", "huber") or a callable ``loss_fn(output, target)``
  returning the batch MEAN (PyTorch's default reduction, as ``nn.HuberLoss()`` does). leantrain weights it by
  the batch's sample count, so a step's loss is the mean per sample over its micro-batches and the
  validation loss the mean over all samples.
- ``metrics``: ``{name: metric}``, reported per epoch as ``val_<name>``. A callable ``metric(output, target)``
  returns a batch mean and is averaged over samples; an object with ``update``/``compute``/``reset`` (a
  torchmetrics ``Metric``) is updated per batch and computed once per epoch (torchmetrics syncs its own
  state across ranks).
- ``output_key``: the model returns a dict (``{"logits": ...}``) or a tuple; the task uses ``output[key]``.
- Multi-input batches: an ``x`` that is a tuple/list is called as ``model(*x)``, a dict as ``model(**x)``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from leantrain.errors import UsageError
from leantrain.tasks import LOSSES, TASKS, SequenceToSequence, Smoothable, Task, get_task


@dataclass(frozen=True)
class TaskAdapter:
    loss_fn: Callable[[Any, Tensor], Tensor] | str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    output_key: str | int | None = None


def is_stateful_metric(metric: Any) -> bool:
    return all(callable(getattr(metric, name, None)) for name in ("update", "compute", "reset"))


def check_adapter(adapter: TaskAdapter, task_name: str) -> TaskAdapter:
    """Validate the user's pieces at the edge, naming the argument."""
    if isinstance(adapter.loss_fn, str):
        if task_name != "regression":
            raise UsageError(f"fit: loss_fn={adapter.loss_fn!r} names a regression loss, but the task is {task_name}; "
                             "pass task='regression', or a callable loss_fn(output, target)")
        if adapter.loss_fn not in LOSSES:
            raise UsageError(f"fit: loss_fn {adapter.loss_fn!r} is not one of: {', '.join(LOSSES)} (or a callable)")
    elif adapter.loss_fn is not None and not callable(adapter.loss_fn):
        raise UsageError(f"fit: loss_fn must be a callable loss_fn(output, target) or a name, got "
                         f"{type(adapter.loss_fn).__name__}")
    if not isinstance(adapter.metrics, Mapping):
        raise UsageError("fit: metrics must be a dict {name: callable or torchmetrics Metric}, got "
                         f"{type(adapter.metrics).__name__}")
    for name, metric in adapter.metrics.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise UsageError(f"fit: metrics name {name!r} must be a plain identifier (it becomes val_<name>)")
        if not (callable(metric) or is_stateful_metric(metric)):
            raise UsageError(f"fit: metrics[{name!r}] must be a callable metric(output, target) or a torchmetrics "
                             f"Metric, got {type(metric).__name__}")
    if adapter.output_key is not None and not isinstance(adapter.output_key, (str, int)):
        raise UsageError(f"fit: output_key must be a dict key (str) or a tuple index (int), got {adapter.output_key!r}")
    return adapter


def call_model(model: Callable[..., Any], x: Any) -> Any:
    if isinstance(x, (tuple, list)):
        return model(*x)
    if isinstance(x, Mapping):
        return model(**x)
    return model(x)


def with_output_key(dataset: Any, output_key: str | None) -> Any:
    """The data set with the command line's or experiment file's ``output_key`` (a digit string: a tuple index);
    ``fit`` sets its own adapter, which is kept."""
    if output_key is None or dataset.adapter is not None:
        return dataset
    key: str | int = int(output_key) if output_key.isdigit() else output_key
    return dataclasses.replace(dataset, adapter=check_adapter(TaskAdapter(output_key=key), dataset.task))


def select_output(output: Any, key: str | int | None) -> Any:
    if key is None:
        if isinstance(output, Mapping):
            raise UsageError(f"the model returns a dict with keys {sorted(map(str, output))}: name the tensor the "
                             "loss takes with output_key='logits' in fit, --output-key logits on the command line")
        if isinstance(output, (tuple, list)):
            raise UsageError(f"the model returns a {type(output).__name__} of {len(output)}: give the index of the "
                             "tensor the loss takes with output_key=0 in fit, --output-key 0 on the command line")
        return output
    try:
        return output[key]
    except (KeyError, IndexError, TypeError):
        have = sorted(map(str, output)) if isinstance(output, Mapping) else f"{type(output).__name__}"
        raise UsageError(f"output_key {key!r} is not in the model's output ({have})") from None


class AdaptedTask:
    """The base task with the user's loss, metrics and output convention."""

    def __init__(self, base: Task, adapter: TaskAdapter):
        self.base, self.adapter = base, adapter
        self.metric, self.higher_is_better = base.metric, base.higher_is_better
        self.custom_loss = callable(adapter.loss_fn)
        self.strict = not isinstance(base, SequenceToSequence)  # the others' losses take one tensor
        # A custom loss is a per-sample mean: its unit is the sample, equal on ranks with equal batches.
        self.units_are_samples = self.custom_loss or getattr(base, "units_are_samples", False)
        # Training accuracy is counted per the base task's unit: kept where that unit is still the loop's.
        keeps_units = not self.custom_loss or getattr(base, "units_are_samples", False)
        self.train_metric = base.train_metric if keeps_units else None
        if self.train_metric is not None and hasattr(base, "predictions"):  # forward already picked the output
            self.predictions = base.predictions

    def forward(self, model: Callable[..., Any], x: Any, y: Tensor) -> Any:
        def forward(*args: Any, **kwargs: Any) -> Any:  # the task's call (seq2seq passes targets too)
            return call_model(model, args[0]) if len(args) == 1 and not kwargs else model(*args, **kwargs)

        output = self.base.forward(forward, x, y)
        if self.adapter.output_key is None and not self.strict:
            return output  # seq2seq's own (logits, decoded) pair in evaluation
        return select_output(output, self.adapter.output_key)

    def loss_sum(self, output: Any, target: Tensor) -> Tensor:
        if self.custom_loss:
            assert callable(self.adapter.loss_fn)
            loss = self.adapter.loss_fn(output, target)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise UsageError(f"loss_fn must return a one-element tensor (the batch mean), got "
                                 f"{type(loss).__name__}{list(loss.shape) if isinstance(loss, Tensor) else ''}")
            return loss.reshape(()).float() * len(target)
        return self.base.loss_sum(output, target)

    def units(self, target: Tensor) -> int:
        return len(target) if self.custom_loss else self.base.units(target)

    def tokens(self, target: Tensor) -> int | None:
        return self.base.tokens(target)

    def correct(self, output: Any, target: Tensor) -> Tensor | None:
        if self.train_metric is None:
            return None
        with torch.no_grad():  # the user's output may hold a graph; the count must not keep it alive
            return self.base.correct(output, target)  # forward already picked the output (output_key)

    def metric_sums(self, output: Any, target: Tensor) -> dict[str, Tensor]:
        sums = self.base.metric_sums(output, target)
        sums["adapter_base_units"] = torch.tensor(self.base.units(target))
        sums["adapter_samples"] = torch.tensor(len(target))
        for name, metric in self.adapter.metrics.items():
            if is_stateful_metric(metric):
                if callable(getattr(metric, "to", None)) and isinstance(output, Tensor):
                    metric.to(output.device)  # a torchmetrics Metric keeps its state where the outputs are
                metric.update(output, target)
            else:
                sums[f"adapter_metric_{name}"] = torch.as_tensor(metric(output, target)).detach().double() * len(target)
        return sums

    def finalize(self, sums: dict[str, float], units: int) -> dict[str, float]:
        mine = {k: v for k, v in sums.items() if k.startswith("adapter_")}
        result = self.base.finalize({k: v for k, v in sums.items() if k not in mine},
                                    int(mine.get("adapter_base_units", units)))
        samples = max(mine.get("adapter_samples", 0), 1)
        for name, metric in self.adapter.metrics.items():
            if is_stateful_metric(metric):
                result[f"val_{name}"] = float(metric.compute())
                metric.reset()
            else:
                result[f"val_{name}"] = mine[f"adapter_metric_{name}"] / samples
        return result


def task_for(dataset: Any, label_smoothing: float = 0.0) -> Task:
    """The task a data set trains: its registered task, adapted by the user's pieces when it carries them;
    ``label_smoothing`` for the cross-entropy tasks (refused, in one line, where the loss is not theirs)."""
    adapter: TaskAdapter | None = getattr(dataset, "adapter", None)
    custom_loss = adapter is not None and adapter.loss_fn is not None
    options: dict[str, Any] = {}
    if label_smoothing:
        if custom_loss or not issubclass(TASKS.get(dataset.task).builder, Smoothable):
            raise UsageError(f"label_smoothing {label_smoothing} applies to leantrain's cross-entropy losses "
                             f"(classification, language-model, seq2seq), not to the {dataset.task} task"
                             f"{' with your loss_fn' if custom_loss else ''}; drop it")
        options["label_smoothing"] = label_smoothing
    if adapter is None:
        return get_task(dataset.task, **options)
    if isinstance(adapter.loss_fn, str):
        base = get_task(dataset.task, loss=adapter.loss_fn)
    else:
        base = get_task(dataset.task, **options)
    return AdaptedTask(base, adapter)
