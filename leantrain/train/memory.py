"""Will the run fit? Its memory estimated before anything is written, against what the device has free.

The estimate: parameters, their gradients, the optimizer's state (per parameter byte, read off the run's
optimizer after one step on a small probe), activations saved for backward (``SavedTensorMeter`` over two
tiny dry steps, extrapolated linearly to the batch size: a fixed part plus a part per sample), and the data
set's tensors. What is already held where the run trains (a CPU run's model and data; a GPU model already
moved there) counts against the machine but not against what is still free. The run estimates the model as
prepared (see ``leantrain/train/run.py``), at the batch each process trains on: checkpointed blocks (their
recomputation measured), an FSDP rank's shard (with the gathered weights alive at the dry step's peak), a pipeline
stage (fed what the earlier stages send, times the micro-batches its schedule holds at once). What it does not
see: allocator slack and temporaries (unsaved intermediates, FSDP's gradient buffers, communication buffers).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leantrain.data.streaming import head, to_device
from leantrain.errors import UsageError
from leantrain.parallel.plan import DRY_SAMPLES, StageShare
from leantrain.techniques.amp import autocast_for
from leantrain.train.adapters import task_for
from leantrain.train.metrics import SavedTensorMeter, storage_key
from leantrain.train.optim import make_optimizer

GIB = 2**30
DRY_BATCHES = (2, DRY_SAMPLES)  # two sizes give the fixed part and the per-sample part of the activations
# Where PyTorch's activation-checkpointing module wrapper (checkpoint_wrapper, as a user's model may hold) is defined:
# such a wrapper may checkpoint only in training mode, and the dry steps must see its recomputation. leantrain's own
# checkpointing replaces a module's forward in place (techniques/recompute.py) and recomputes whenever grad is on.
CHECKPOINT_WRAPPERS = frozenset({"torch.distributed.algorithms._checkpoint.checkpoint_wrapper"})
MEMINFO = Path("/proc/meminfo")
CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    data: int
    resident: int  # of the above, already held where the run trains (a CPU run's model and data)

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations + self.data

    @property
    def still_needed(self) -> int:
        return self.total - self.resident

    def describe(self) -> str:
        parts = {"parameters": self.parameters, "gradients": self.gradients, "optimizer state": self.optimizer,
                 "activations": self.activations, "data": self.data}
        return f"{_gib(self.total)} (" + ", ".join(f"{k} {_gib(v)}" for k, v in parts.items()) + ")"


OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


def estimate(model: nn.Module, dataset: Any, config: Any, device: torch.device,
             optimizer: OptimizerFactory | None = None, stage: StageShare | None = None) -> MemoryEstimate:
    """One process's memory for ``config`` (batch size per process, optimizer, precision) training ``model`` (as
    prepared: an FSDP rank's shard, a pipeline's ``stage``) on ``dataset``; ``optimizer``: a user's optimizer
    factory instead of the config's named optimizer."""
    params = list(model.parameters())
    param_bytes = sum(_bytes(p) for p in params)
    trainable = sum(_bytes(p) for p in params if p.requires_grad)
    data_tensors = _tensors([dataset.x_train, dataset.y_train, dataset.x_val, dataset.y_val])  # inputs may be nested
    data = sum(_bytes(t) for t in data_tensors)
    resident = sum(_bytes(t) for t in [*params, *data_tensors] if t.device.type == device.type)
    return MemoryEstimate(
        parameters=param_bytes, gradients=trainable,
        optimizer=_optimizer_bytes([p for p in params if p.requires_grad], config, optimizer and optimizer(model)),
        # batch_size auto: the largest batch it may choose
        activations=activation_bytes(model, dataset, max(config.batch_candidates(len(dataset.y_train))),
                                     config.precision, stage),
        data=data, resident=resident,
    )


def optimizer_state_layout(config: Any, like: torch.optim.Optimizer | None = None) -> tuple[float, int]:
    """The optimizer's state as (bytes per byte of trainable parameter, fixed bytes per parameter tensor): Adam
    keeps two moments and a step count, SGD with momentum one buffer. Read off the run's own optimizer after
    one step on a probe layer, rather than assumed per kind. ``like``: a user's optimizer, whose class and
    settings the probe's copies (the optimizer itself is never stepped)."""
    with torch.random.fork_rng(devices=[]):  # the probe's initialisation must not shift the run's random stream
        probe = nn.Linear(8, 8, bias=False)
    optimizer_name = "adam" if config.optimizer == "auto-adam" else config.optimizer  # any Adam kernel keeps the same
    optimizer = _like(like, probe) or make_optimizer(config.replace(optimizer=optimizer_name), probe)
    probe.weight.grad = torch.zeros_like(probe.weight)
    optimizer.step()
    state = [v for v in optimizer.state[probe.weight].values() if torch.is_tensor(v)]
    shaped = sum(_bytes(v) for v in state if v.shape == probe.weight.shape)
    return shaped / _bytes(probe.weight), sum(_bytes(v) for v in state if v.shape != probe.weight.shape)


def _like(optimizer: torch.optim.Optimizer | None, probe: nn.Module) -> torch.optim.Optimizer | None:
    """A fresh optimizer of ``optimizer``'s class and settings over ``probe``; None if it cannot be rebuilt so."""
    if optimizer is None:
        return None
    try:
        return type(optimizer)(probe.parameters(), **optimizer.defaults)
    except (TypeError, ValueError):  # a class whose defaults are not its constructor's keywords
        return None


def _optimizer_bytes(trainable: list[torch.Tensor], config: Any, like: torch.optim.Optimizer | None) -> int:
    per_byte, per_tensor = optimizer_state_layout(config, like)
    return math.ceil(sum(_bytes(p) for p in trainable) * per_byte) + per_tensor * len(trainable)


def activation_bytes(model: nn.Module, dataset: Any, batch_size: int, precision: str,
                     stage: StageShare | None = None) -> int:
    """Bytes saved for backward by one step of ``batch_size`` per process, from dry steps on two tiny batches (a
    fixed part plus a part per sample). A pipeline ``stage`` holds the activations of the micro-batches its schedule
    keeps in flight, and the batch's own tensors once: its micro-batches are views of them.

    The dry steps run in eval mode, as ``dry_forward`` does: a model's training forward (its dropout draws, its
    batch-norm statistics, a user's own per-call logic) sees only real steps. That leaves out dropout's masks
    (a byte per element), a small undercount. Gradients, buffers and the random state are put back."""
    task = task_for(dataset)  # the user's own loss where one is given
    rows = len(dataset.y_train) if stage is None or stage.inputs is None else len(stage.inputs)
    sizes = sorted({min(b, rows) for b in DRY_BATCHES})
    with _dry_mode(model):
        measured = [_dry_step(model, task, dataset, size, precision, stage) for size in sizes]
    activations = [a for a, _ in measured]
    if stage is None:
        return _at(sizes, activations, batch_size)
    batch_data = _at(sizes, [d for _, d in measured], batch_size)
    return _at(sizes, activations, math.ceil(batch_size / stage.microbatches)) * stage.in_flight + batch_data


def _at(sizes: list[int], measured: list[int], batch_size: int) -> int:
    """The line through the dry steps' figures (a fixed part, a part per sample), at ``batch_size``."""
    if len(sizes) == 1:
        return math.ceil(measured[0] * batch_size / sizes[0])
    per_sample = max(0.0, (measured[1] - measured[0]) / (sizes[1] - sizes[0]))
    fixed = max(0.0, measured[0] - per_sample * sizes[0])
    return math.ceil(fixed + per_sample * batch_size)


@contextlib.contextmanager
def _dry_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, except PyTorch's activation-checkpointing wrappers (they recompute in backward as in training,
    whatever they gate on); the mode of every module, the buffers and the random state put back, the gradients
    dropped."""
    modes = [(m, m.training) for m in model.modules()]
    rng = torch.get_rng_state()
    buffers = [b.detach().clone() for b in model.buffers()]
    model.eval()
    for module in model.modules():
        if type(module).__module__ in CHECKPOINT_WRAPPERS:
            module.training = True  # the wrapper alone: the blocks it wraps stay in eval mode
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        torch.set_rng_state(rng)
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), buffers):
                buffer.copy_(saved)
        for p in model.parameters():
            p.grad = None


def _dry_step(model: nn.Module, task: Any, dataset: Any, size: int, precision: str,
              stage: StageShare | None) -> tuple[int, int]:
    """(the peak bytes one forward and backward of ``size`` samples saves for backward, of which the batch's own
    tensors). For a pipeline stage the first figure leaves the batch's tensors out, and a stage past the first is fed
    the earlier stages' output; one before the last back-propagates a gradient of ones, as if received."""
    device = next((p.device for p in model.parameters()), dataset.y_train.device)
    # Copies, as the loop's batches are: a slice's storage is the whole data set's, which the meter would count.
    if stage is None or stage.inputs is None:
        x = _copy(to_device(head(dataset.x_train, size), device))
    else:
        x = stage.inputs[:size].clone().requires_grad_(True)  # a received activation: the stage sends its gradient
    y = dataset.y_train[:size].to(device).clone()
    batch = [] if stage is None else [y, *([] if stage.inputs is not None else _tensors(x))]
    meter = SavedTensorMeter([*model.parameters(), *batch])
    computes_loss = stage is None or stage.computes_loss
    with meter.measure():
        with autocast_for(device, precision):
            output = task.forward(model, x, y)
            loss = task.loss_sum(output, y) if computes_loss else output
        with meter.backward():
            loss.backward(None if computes_loss else torch.ones_like(loss))
    saved = {storage_key(t.untyped_storage()) for t in batch} & meter.excluded_saved
    return meter.peak_bytes, sum(_bytes(t) for t in batch if storage_key(t.untyped_storage()) in saved)


def available_bytes(device: torch.device) -> int | None:
    """Free memory where the run trains: the GPU's free bytes, or the CPU's MemAvailable (capped by this
    container's cgroup limit); None where neither can be read (then nothing is checked)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    free = _meminfo_available()
    limit = _cgroup_free()
    if free is None or limit is None:
        return free if limit is None else limit
    return min(free, limit)


def fits_in_memory(model: nn.Module, dataset: Any, config: Any, device: torch.device, processes: int = 1) -> bool:
    """Whether ``config``'s estimate fits in the free memory (True where the free memory is unknown)."""
    free = available_bytes(device)
    return free is None or estimate(model, dataset, config, device).still_needed * processes <= free


def check_memory(model: nn.Module, dataset: Any, config: Any, device: torch.device, processes: int = 1,
                 optimizer: OptimizerFactory | None = None, stage: StageShare | None = None) -> None:
    """Refuse, in one line, a run whose estimate exceeds the free memory. ``processes``: ranks sharing it;
    ``stage``: a pipeline rank's part of the step."""
    free = available_bytes(device)
    if free is None:
        return
    need = estimate(model, dataset, config, device, optimizer, stage)
    if need.still_needed * processes <= free:
        return
    per = f" per process x {processes} processes" if processes > 1 else ""
    loaded = f"; {_gib(need.resident)} of it already loaded" if need.resident else ""
    raise UsageError(
        f"not enough memory on {device.type}: this run needs about {need.describe()}{per}{loaded}, but only "
        f"{_gib(free)} more is available; use a smaller batch_size, model or data set, or skip this check with "
        "--memory-check false")


def _meminfo_available() -> int | None:
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_free() -> int | None:
    """cgroup v2's limit minus usage, when this process runs under a limit."""
    try:
        limit = (CGROUP / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((CGROUP / "memory.current").read_text()))
    except (OSError, ValueError):
        return None


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a tensor or a (nested) tuple/list/dict of them (a model with several inputs)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_copy(v) for v in value)
    return value


def _bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a DTensor's own shard
    return local.numel() * local.element_size()


def _gib(n: int) -> str:
    """Bytes in the largest binary unit that keeps a digit before the point: 2.50 GiB, 300.0 MiB, 12.0 KiB."""
    for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}" if unit == "GiB" else f"{n / size:.1f} {unit}"
    return f"{n} B"
