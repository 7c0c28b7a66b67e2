"""``leantrain.fit``: train a user's own ``nn.Module`` through leantrain's loop, with minimal changes to their code.

Everything the user brings is checked here, at the edge, in one line naming the argument: the model, the data,
the techniques and callbacks, the loss, metrics and output convention, the optimizer and scheduler. Then
``run.execute`` runs the same loop the CLI does; its preflight (a dry forward and backward) catches what only
the model can tell, still before any folder is made.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leantrain.config import RunConfig
from leantrain.data.dataset import Dataset
from leantrain.errors import UsageError
from leantrain.naming import safe_part, settings_hash
from leantrain.techniques import from_config
from leantrain.techniques.base import Technique
from leantrain.train.adapters import TaskAdapter, check_adapter, select_output
from leantrain.train.callbacks import Callback, KeepBest, SchedulerStep
from leantrain.train.result import FitResult
from leantrain.train.run import execute
from leantrain.train.run_identity import FinishedRecord, settle_finished


def fit(
    model: nn.Module | str,
    data: Dataset,
    *,
    epochs: int = 5,
    techniques: Sequence[Technique] = (),
    callbacks: Sequence[Callback] = (),
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | str | None = None,
    metrics: Mapping[str, Any] | None = None,
    output_key: str | int | None = None,
    optimizer: torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | str | None = None,
    scheduler: Any = None,
    scheduler_interval: str = "epoch",
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    quiet: bool = True,
    **options: Any,
) -> FitResult:
    """Train ``model`` on ``data`` (``leantrain.data.from_tensors``, ``from_loader`` or ``load``); returns a
    ``FitResult`` (``.epochs``, ``.model``, ``.best_checkpoint``, ``.predict(x)``; ``result["summary"]`` reads
    the run's record, the JSON document ``leantrain train`` writes). ``model`` may be a name, as on the command
    line (``"timm:resnet18"``, ``"hf:bert:num_hidden_layers=2"``: ``leantrain.models.build``, seeded by ``seed``).

    - ``options``: RunConfig fields (batch_size, lr, device, seed, target, precision, schedule, ...).
    - ``techniques``: objects run in addition to those the options switch on, never the same one twice. Each fit
      starts them as constructed, so one list can be reused across fits (afterwards they hold the last run's state).
    - ``callbacks``: ``leantrain.Callback`` objects (``EarlyStopping``, ``KeepBest``, your own), called as given.
    - ``loss_fn``: a regression loss name ("mse", "l1", "huber") or a callable returning the batch mean;
      ``metrics``: ``{name: callable or torchmetrics Metric}``; ``output_key``: picks the tensor from a model
      returning a dict or tuple (see ``leantrain.train.adapters``).
    - ``optimizer``: a name ("adam", "sgd", ...), a ``torch.optim.Optimizer`` over the model's parameters, or a
      factory called with the trainable parameters (``functools.partial(torch.optim.SGD, lr=0.1)``). Its group 0
      lr is the run's lr. ``scheduler``: an ``LRScheduler`` (or ``ReduceLROnPlateau``) on that optimizer, or a
      factory ``lambda opt: ...``, stepped per ``scheduler_interval`` ("epoch" or "step").
    - The lr rule: a technique that sets the lr (``WarmupCosine``, ``AdaptiveAccumulation``'s lr scaling) sets
      group 0's lr and scales the other groups by their initial ratio to it; a ``scheduler`` owns the lr, so it
      is refused together with those techniques.
    - ``checkpoint_dir``: a checkpoint each epoch and the record at the end, named after the model class, the
      data and a hash of the model's and data's shapes and types (``name=`` to choose), so fits of different
      models or data keep separate files; ``resume=True`` continues an interrupted run (with the same settings);
      a finished run of the same name is never trained over unless ``force=True``: ``resume=True`` of a finished
      run raises ``UsageError`` (its record is final and its weights are not kept; a stale checkpoint beside the
      record is removed). Read its record with ``json.load``, or pass ``save_model=True`` to keep the weights.

    Bad arguments raise ``leantrain.UsageError`` in one line, before any folder is made.
    """
    model, output_key = _check_arguments(model, data, checkpoint_dir, epochs, output_key, options.get("seed", 0))
    given = [_fresh(t) for t in _checked_techniques(techniques, "techniques")]
    hooks = _checked_techniques(callbacks, "callbacks")
    adapter = check_adapter(TaskAdapter(loss_fn, metrics if metrics is not None else {}, output_key), data.task)
    data = dataclasses.replace(data, adapter=adapter)
    build_optimizer, optimizer_label = _optimizer(model, optimizer, options)
    if scheduler is not None:
        _check_scheduler(scheduler, optimizer)
        hooks = [*hooks, SchedulerStep(scheduler, scheduler_interval)]

    facts = _what_is_trained(model, data, loss=_label(loss_fn) or "default", metrics=sorted(adapter.metrics),
                             optimizer=optimizer_label, scheduler=_label(scheduler))
    if data.streams is not None:
        _check_streamed(data, options)
    config = _run_config(epochs, options, facts)
    if scheduler is not None:
        _check_lr_has_one_owner(config, given)
    out_dir = Path(checkpoint_dir) if checkpoint_dir else None
    best = _place_best_checkpoints(hooks, out_dir, config.run_name)
    if out_dir is not None:
        _check_not_finished(out_dir, config.run_name, resume=resume, force=force)
    recorded_config = {**config.to_dict(), "model": facts["model_class"], "data": data.name, "optimizer": optimizer_label}
    if data.streams is not None:
        recorded_config["loader"] = "stream"  # batches read as training goes, whatever loader= says
    with _no_empty_folder_left(out_dir):
        record = execute(
            config, model=model, dataset=data, techniques=given + hooks, out_dir=out_dir, resume=resume, quiet=quiet,
            force=force, optimizer=build_optimizer, extra_run_fields={**facts, "config": recorded_config},
        )
    if isinstance(record, FinishedRecord):  # it finished while this fit waited to start (see _check_not_finished)
        raise UsageError(f"fit: {record.message(FIT_AGAIN)}")
    return FitResult(record, model, best if best and best.exists() else None,
                     output=(lambda out: select_output(out, output_key)) if output_key is not None else None)


def _check_arguments(model: Any, data: Any, checkpoint_dir: Any, epochs: Any, output_key: str | int | None,
                     seed: Any) -> tuple[nn.Module, str | int | None]:
    """The arguments checked; a model given by name built (and its output key, logits for hf:)."""
    if isinstance(model, str):
        _check_data(data)
        model, output_key = _named_model(model, data, output_key, seed)
    _check_model_and_data(model, data)
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, Path)):
        raise UsageError(f"fit: checkpoint_dir must be a path, got {type(checkpoint_dir).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        raise UsageError(f"fit: epochs must be an integer, got {epochs!r}")
    return model, output_key


def _named_model(spec: str, data: Dataset, output_key: str | int | None, seed: Any) -> tuple[nn.Module, str | int | None]:
    """The model a name builds, its weights drawn from ``seed`` (the caller's random state left as it was)."""
    from leantrain import models
    from leantrain.models import thirdparty

    models.check(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed if isinstance(seed, int) else 0)
        model = models.build(spec, data)
    return model, output_key if output_key is not None else thirdparty.default_output_key(spec)


def _run_config(epochs: int, options: dict[str, Any], facts: dict[str, Any]) -> RunConfig:
    """The run's settings: the options, named after what is trained unless ``name=`` says otherwise."""
    placeholders = {"model": "mlp", "data": "imagenet-sim"}  # RunConfig's registered names; unused with a model
    config = RunConfig.from_dict({**placeholders, "epochs": epochs, **options}, where="fit")
    return config if options.get("name") else config.replace(name=_run_name(facts))


def _what_is_trained(model: nn.Module, data: Dataset, **labels: Any) -> dict[str, Any]:
    """The record's facts: the user's class, shapes and dtypes, never a placeholder spec."""
    facts = {
        "model": type(model).__name__, "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "data": data.name, "data_spec": None, "task": data.task, **labels,
        "data_shape": _shape(data.x_train)[1:] if isinstance(data.x_train, torch.Tensor) else _shape(data.x_train),
        "data_shapes": {k: _shape(getattr(data, k)) for k in ("x_train", "y_train", "x_val", "y_val")},
        "data_dtypes": {"x": _dtype(data.x_train), "y": _dtype(data.y_train)},
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if data.streams is not None:  # the tensors hold a first batch; the record counts every sample
        facts.update(streamed=True, train_samples=len(data.streams[0]), val_samples=len(data.streams[1]))
        facts["data_shapes"] = {"x_batch": _shape(data.x_train), "y_batch": _shape(data.y_train)}
    return facts


@contextlib.contextmanager
def _no_empty_folder_left(out_dir: Path | None) -> Iterator[None]:
    """A failed first fit leaves no empty folder behind (a folder that existed before is left as it was)."""
    existed = out_dir is not None and out_dir.exists()
    try:
        yield
    except BaseException:
        if out_dir is not None and not existed:
            _remove_if_only_locks(out_dir)
        raise


def _run_name(facts: dict[str, Any]) -> str:
    """Named by what is trained, not how: another model or data set gets its own files; the same one with other
    settings meets its own record or checkpoint and is refused (resume checks the settings)."""
    identity = {k: facts[k] for k in ("model_class", "trainable_params", "data", "task", "data_shapes", "data_dtypes")}
    return f"{safe_part(facts['model'].lower())}-{safe_part(facts['data'])}-{settings_hash(identity)}"


def _check_streamed(data: Dataset, options: dict[str, Any]) -> None:
    """What streamed data cannot do: measure on in-memory tensors, or save a several-input model file."""
    for key, allowed in (("precision", "fp32/bf16/fp16"), ("optimizer", "adam/foreach-adam/fused-adam"),
                         ("procs", "a number")):
        if options.get(key) == "auto":
            raise UsageError(f"fit: {key}='auto' measures on in-memory tensors; with streamed data choose {allowed}")
    if options.get("parallel") == "ensemble" or options.get("optimizer") == "auto-adam":
        raise UsageError("fit: streamed data trains with parallel none or ddp and a named optimizer")
    if options.get("save_model") and not isinstance(data.x_train, torch.Tensor):
        raise UsageError("fit: save_model writes a model file for one input tensor; save a model with several "
                         "inputs yourself (torch.save(result.model.state_dict(), path))")


def _fresh(technique: Technique) -> Technique:
    """The technique as constructed: its state belongs to one run, so a later fit starts it afresh. The object
    keeps the last run's state afterwards, for the user to read."""
    pristine = technique.__dict__.get("_state_as_constructed")
    if pristine is None:
        technique.__dict__["_state_as_constructed"] = copy.deepcopy(technique.__dict__)
    else:
        technique.__dict__.clear()
        technique.__dict__.update(copy.deepcopy(pristine))
        technique.__dict__["_state_as_constructed"] = pristine
    return technique


def _check_model_and_data(model: Any, data: Any) -> None:
    if isinstance(model, type) and issubclass(model, nn.Module):
        raise UsageError(f"fit: model is the class {model.__name__}; pass an instance, e.g. {model.__name__}()")
    if not isinstance(model, nn.Module):
        raise UsageError(f"fit: model must be a torch.nn.Module or a name (timm:resnet18), got {type(model).__name__}")
    _check_data(data)
    if not any(p.requires_grad for p in model.parameters()):
        raise UsageError(f"fit: {type(model).__name__} has no trainable parameters")


def _check_data(data: Any) -> None:
    if not isinstance(data, Dataset):
        from torch.utils.data import DataLoader
        from torch.utils.data import Dataset as TorchDataset

        if isinstance(data, (DataLoader, TorchDataset)):
            raise UsageError(f"fit: data is a torch {type(data).__name__}; wrap it with leantrain.data.from_loader(data)")
        raise UsageError(f"fit: data must be a leantrain Dataset, got {type(data).__name__}; wrap tensors or numpy "
                         "arrays with leantrain.data.from_tensors(x, y)")


def _checked_techniques(items: Any, what: str) -> list[Technique]:
    if isinstance(items, (str, bytes, Technique)) or not isinstance(items, Sequence):
        raise UsageError(f"fit: {what} must be a list, e.g. [lt.MixedPrecision('bf16')], got {type(items).__name__}")
    for item in items:
        if isinstance(item, str):
            raise UsageError(f"fit: {what} holds the string {item!r}; pass objects such as lt.MixedPrecision('bf16'), "
                             "or switch a technique on by option (precision='bf16')")
        if isinstance(item, type) and issubclass(item, Technique):
            raise UsageError(f"fit: {what} holds the class {item.__name__}; pass an instance, e.g. {item.__name__}(...)")
        if not isinstance(item, Technique):
            raise UsageError(f"fit: {what} must be a list of leantrain {what}, got a {type(item).__name__} in it")
    return list(items)


def _optimizer(model: nn.Module, optimizer: Any, options: dict[str, Any]
               ) -> tuple[Callable[[nn.Module], torch.optim.Optimizer] | None, str]:
    """The optimizer builder for the run (None: the config's named one) and its label for the record."""
    if optimizer is None:
        return None, str(options.get("optimizer", "adam"))
    if isinstance(optimizer, str):
        if "optimizer" in options:
            raise UsageError("fit: optimizer given twice (as optimizer= and in the options); use one")
        options["optimizer"] = optimizer
        return None, optimizer
    if "optimizer" in options:
        raise UsageError("fit: optimizer given twice; use one")
    if not isinstance(optimizer, torch.optim.Optimizer):
        if not callable(optimizer):
            raise UsageError(f"fit: optimizer must be a name, a torch.optim.Optimizer or a factory of one, got "
                             f"{type(optimizer).__name__}")
        built = optimizer([p for p in model.parameters() if p.requires_grad])
        if not isinstance(built, torch.optim.Optimizer):
            raise UsageError(f"fit: the optimizer factory returned {type(built).__name__}, not a torch.optim.Optimizer")
        optimizer = built
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if held - {id(p) for p in model.parameters()}:
        raise UsageError("fit: the optimizer holds parameters that are not the model's; build it on "
                         "model.parameters() of the model you pass")
    if trainable - held:
        raise UsageError(f"fit: the optimizer leaves {len(trainable - held)} of the model's trainable tensors out; "
                         "build it on all of model.parameters() (or set requires_grad=False on the frozen ones)")
    lr = float(optimizer.param_groups[0]["lr"])
    if "lr" in options and float(options["lr"]) != lr:
        raise UsageError(f"fit: lr={options['lr']} but the optimizer's lr is {lr}; set it in one place")
    options["lr"] = lr
    for group in optimizer.param_groups:  # techniques that set the lr keep the groups' ratios (see fit's doc)
        group["lr_ratio"] = float(group["lr"]) / lr if lr else 1.0
    instance = optimizer
    return (lambda m: instance), type(optimizer).__name__


def _check_scheduler(scheduler: Any, optimizer: Any) -> None:
    bound = isinstance(scheduler, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau))
    if not bound and not callable(scheduler):
        raise UsageError(f"fit: scheduler must be an LRScheduler or a factory lambda opt: ..., got {type(scheduler).__name__}")
    if bound and scheduler.optimizer is not optimizer:
        raise UsageError("fit: the scheduler is built on another optimizer than optimizer=; pass that optimizer "
                         "too, or a factory: scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 10)")


def _check_lr_has_one_owner(config: RunConfig, given: list[Technique]) -> None:
    """A user's scheduler owns the learning rate: a technique that sets it too is refused alongside one."""
    setting_lr = [t.name for t in [*from_config(config), *given] if t.sets_lr]
    if setting_lr:
        raise UsageError(f"fit: scheduler= and {', '.join(sorted(set(setting_lr)))} both set the learning rate; "
                         "use one (AdaptiveAccumulation composes with lr_scaling='none')")


def _place_best_checkpoints(hooks: list[Technique], out_dir: Path | None, run_name: str) -> Path | None:
    best = None
    for hook in hooks:
        if isinstance(hook, KeepBest):
            if hook.path is None:
                if out_dir is None:
                    raise UsageError("fit: KeepBest() needs a path (KeepBest('best.pt')) or fit's checkpoint_dir=")
                hook.path = out_dir / f"{run_name}.best.pt"
            best = hook.path
    return best


FIT_AGAIN = "resume=True continues only an interrupted run; pass force=True to train it again, or name= for a separate run"


def _check_not_finished(out_dir: Path, run_name: str, *, resume: bool, force: bool) -> None:
    """A finished run is never trained over without force=True. Resuming one finds its record final (a stale
    checkpoint a kill left beside it removed) and raises too: its trained weights are not kept, so returning the
    record would hand back the model untrained."""
    if force:
        return
    if resume:
        finished = settle_finished(out_dir, run_name)
        if finished is not None:
            raise UsageError(f"fit: {finished.message(FIT_AGAIN)}")
    elif (out_dir / f"{run_name}.json").exists():
        raise UsageError(f"fit: {out_dir / f'{run_name}.json'} holds a finished run with these settings; pass "
                         "force=True to train it again, or name= for a separate run")


def _remove_if_only_locks(folder: Path) -> None:
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    if all(e.name.startswith(".") and e.name.endswith(".lock") for e in entries):
        shutil.rmtree(folder, ignore_errors=True)


def _label(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if inspect.isfunction(value) or inspect.ismethod(value):
        return value.__qualname__
    return type(value).__name__


def _dtype(value: Any) -> Any:
    """A tensor's dtype name; for several inputs, one per input."""
    if isinstance(value, Mapping):
        return {k: _dtype(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_dtype(v) for v in value]
    return str(value.dtype).removeprefix("torch.")


def _shape(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_shape(v) for v in value]
    return list(value.shape)
