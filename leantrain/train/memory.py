"""Will the run fit? Its memory estimated before anything is written, against what the device has free.

The estimate: parameters, their gradients, the optimizer's state (per parameter byte, read off the run's
optimizer after one step on a small probe), activations saved for backward (``SavedTensorMeter`` over two
tiny dry steps, extrapolated linearly to the batch size: a fixed part plus a part per sample), and the data
set's tensors. What is already held where the run trains (a CPU run's model and data; a GPU model already
moved there) counts against the machine but not against what is still free. The run estimates the model as
prepared (see ``leantrain/train/run.py``): checkpointed blocks, an FSDP rank's shard. What it does not see:
allocator slack, and a pipeline stage's share (a stage cannot take a dry step alone: pipelines are estimated
as if every rank held the whole model, an upper bound).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leantrain.data.streaming import head, to_device
from leantrain.errors import UsageError
from leantrain.techniques.amp import autocast_for
from leantrain.techniques.checkpointing import CheckpointedBlocks
from leantrain.train.adapters import task_for
from leantrain.train.metrics import SavedTensorMeter
from leantrain.train.optim import make_optimizer

GIB = 2**30
DRY_BATCHES = (2, 8)  # two sizes give the fixed part and the per-sample part of the activations
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
             optimizer: OptimizerFactory | None = None, data_ranks: int = 1) -> MemoryEstimate:
    """One process's memory for ``config`` (batch size, optimizer, precision) training ``model`` on ``dataset``;
    ``optimizer``: a user's optimizer factory instead of the config's named optimizer; ``data_ranks``: the ranks
    that split each (global) batch, so that this one's activations are of its share."""
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
        activations=activation_bytes(
            model, dataset, math.ceil(max(config.batch_candidates(len(dataset.y_train))) / data_ranks), config.precision),
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


def activation_bytes(model: nn.Module, dataset: Any, batch_size: int, precision: str) -> int:
    """Bytes saved for backward by one micro-batch of ``batch_size``, from dry steps on two tiny batches.

    The dry steps run in eval mode, as ``dry_forward`` does: a model's training forward (its dropout draws, its
    batch-norm statistics, a user's own per-call logic) sees only real steps. That leaves out dropout's masks
    (a byte per element), a small undercount. Checkpointed blocks still recompute in segments, as they will in
    training. Gradients, buffers and the random state are put back."""
    task = task_for(dataset)  # the user's own loss where one is given
    sizes = sorted({min(b, len(dataset.y_train)) for b in DRY_BATCHES})
    device = next((p.device for p in model.parameters()), dataset.y_train.device)
    rng, was_training = torch.get_rng_state(), model.training
    model.eval()
    for module in model.modules():
        if isinstance(module, CheckpointedBlocks):
            module.training = True  # the container alone: it recomputes its segments as in training, blocks in eval
    buffers = [b.detach().clone() for b in model.buffers()]
    measured = []
    try:
        for size in sizes:
            # Copies, as the loop's batches are: a slice's storage is the whole data set's, which the meter would count.
            x = _copy(to_device(head(dataset.x_train, size), device))
            y = dataset.y_train[:size].to(device).clone()
            meter = SavedTensorMeter(list(model.parameters()))
            with meter.measure():
                with autocast_for(device, precision):
                    loss = task.loss_sum(task.forward(model, x, y), y)
                with meter.backward():
                    loss.backward()
            measured.append(meter.peak_bytes)
    finally:
        model.train(was_training)
        torch.set_rng_state(rng)
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), buffers):
                buffer.copy_(saved)
        for p in model.parameters():
            p.grad = None
    if len(sizes) == 1:
        return math.ceil(measured[0] * batch_size / sizes[0])
    per_sample = max(0.0, (measured[1] - measured[0]) / (sizes[1] - sizes[0]))
    fixed = max(0.0, measured[0] - per_sample * sizes[0])
    return math.ceil(fixed + per_sample * batch_size)


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
                 optimizer: OptimizerFactory | None = None, data_ranks: int = 1) -> None:
    """Refuse, in one line, a run whose estimate exceeds the free memory. ``processes``: ranks sharing it;
    ``data_ranks``: the ranks splitting each batch."""
    free = available_bytes(device)
    if free is None:
        return
    need = estimate(model, dataset, config, device, optimizer, data_ranks)
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
