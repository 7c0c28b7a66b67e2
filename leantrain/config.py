"""The typed run configuration: one dataclass, read from TOML tables and CLI flags, validated once here.

Every field is documented by its ``help`` metadata; the CLI's ``train`` flags are generated from these
fields, so a new option is added in one place. Below this edge, code trusts a validated RunConfig.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import torch

from leantrain.errors import UsageError

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
LOADERS = ("tensor", "dataloader")
OPTIMIZERS = ("adam", "foreach-adam", "fused-adam", "auto-adam", "adamw", "sgd")
ACCUMULATIONS = ("off", "adaptive")
LR_SCALINGS = ("sqrt", "linear", "none")
SCHEDULES = ("constant", "warmup-cosine")
COMPLEXITIES = ("off", "match")


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class RunConfig:
    model: str = _opt("mlp", "registered model, with options: NAME[:key=value,...]")
    data: str = _opt("imagenet-sim", "registered data set, with options: NAME[:key=value,...]")
    epochs: int = _opt(5, "passes over the training split")
    batch_size: int = _opt(64, "samples per optimizer step (per worker)")
    eval_batch_size: int = _opt(1024, "samples per validation batch")
    lr: float = _opt(1e-3, "learning rate")
    optimizer: str = _opt(
        "adam", "optimizer (foreach-/fused-adam: the same Adam update in grouped or fused kernels; auto-adam: the "
        "fastest of the three, timed here)", OPTIMIZERS,
    )
    weight_decay: float = _opt(0.0, "weight decay")
    loader: str = _opt(
        "tensor", "batch source: device-resident tensor slices, or PyTorch's DataLoader (the seeds' recipe)", LOADERS
    )
    precision: str = _opt(
        "fp32", "compute precision: fp32, bf16 autocast, fp16 autocast with loss scaling, or auto (the fastest of "
        "them whose loss keeps with fp32's, timed on this machine and model)", PRECISIONS,
    )
    grad_clip: float | None = _opt(None, "clip the gradient norm to this max (after fp16 unscaling); none: no clipping")
    checkpointing: str | int = _opt(
        "off", "activation checkpointing of the model's blocks: off, sqrt (√L segments), or a segment count"
    )
    accumulation: str = _opt(
        "off", "gradient accumulation: off, or adaptive (k micro-batches per step follows the gradient noise scale)",
        ACCUMULATIONS,
    )
    accum_max: int = _opt(16, "adaptive accumulation: most micro-batches per optimizer step (least is 2)")
    lr_scaling: str = _opt("sqrt", "adaptive accumulation: lr = lr * k**p, p = 0.5 (sqrt), 1 (linear), 0 (none)", LR_SCALINGS)
    schedule: str = _opt("constant", "learning-rate schedule: constant, or linear warmup + cosine annealing", SCHEDULES)
    warmup: float = _opt(0.05, "warmup-cosine: fraction of training spent warming up")
    min_lr_ratio: float = _opt(0.1, "warmup-cosine: final lr as a fraction of lr")
    complexity: str = _opt("off", "complexity matching (mlp): off, or match (widen the hidden layer while it helps)", COMPLEXITIES)
    start_width: int = _opt(8, "complexity matching: hidden width to start from")
    max_width: int = _opt(256, "complexity matching: largest hidden width")
    compile: bool = _opt(False, "torch.compile the model (eager mode, with a warning, where it fails)")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")
    seed: int = _opt(0, "seed for data, initialisation and batch order")
    target: float | None = _opt(None, "target validation metric (e.g. accuracy 0.7) for time-to-target")
    threads: str | int | None = _opt(
        None, "CPU threads for PyTorch: a count, auto (the CPUs other processes leave free), or none (PyTorch's choice)"
    )
    name: str = _opt("", "run name (default: derived from data, model and seed)")

    @property
    def run_name(self) -> str:
        return self.name or f"{self.data}-{self.model}-s{self.seed}".replace(":", "_").replace(",", "_").replace("=", "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> RunConfig:
        """Build from TOML/JSON values: unknown keys and wrong types are errors that say where they are."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                raise UsageError(f"{where}: unknown key {key!r}; allowed: {', '.join(known)}")
            kwargs[key] = _check_type(key, value, _field_type(known[key]), where)
        return cls(**kwargs).validated(where)

    def replace(self, **changes: Any) -> RunConfig:
        return RunConfig.from_dict({**self.to_dict(), **changes})

    def validated(self, where: str = "config") -> RunConfig:
        """Check every value; raise UsageError naming the first bad one. Returns self for chaining."""
        from leantrain.data.registry import DATASETS  # late: the registries import leantrain modules
        from leantrain.models.registry import MODELS
        from leantrain.registry import check_spec

        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{where}: {name} must be a positive integer, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UsageError(f"{where}: lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise UsageError(f"{where}: weight_decay must be >= 0, got {self.weight_decay}")
        if isinstance(self.threads, str) and self.threads.isdigit():
            self.threads = int(self.threads)  # from the command line, a count arrives as text
        if self.threads is not None and self.threads != "auto" and not (isinstance(self.threads, int) and self.threads > 0):
            raise UsageError(f"{where}: threads must be a positive integer or auto, got {self.threads!r}")
        self._validate_techniques(where)
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise UsageError(f"{where}: {f.name} {getattr(self, f.name)!r} is not one of: {', '.join(choices)}")
        resolve_device(self.device, where)
        check_spec(DATASETS, self.data, "seed")
        check_spec(MODELS, self.model, "data")
        return self

    def _validate_techniques(self, where: str) -> None:
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise UsageError(f"{where}: grad_clip must be > 0 (or none), got {self.grad_clip}")
        ckpt = self.checkpointing
        if isinstance(ckpt, str) and ckpt.isdigit():
            ckpt = self.checkpointing = int(ckpt)  # from the command line, a count arrives as text
        if not (ckpt in ("off", "sqrt") or (isinstance(ckpt, int) and ckpt >= 1)):
            raise UsageError(f"{where}: checkpointing {ckpt!r} is not off, sqrt or a positive segment count")
        if self.accum_max < 2:
            raise UsageError(f"{where}: accum_max must be >= 2 (adaptive accumulation needs two batch sizes), got {self.accum_max}")
        if not 0 <= self.warmup < 1:
            raise UsageError(f"{where}: warmup must be a fraction in [0, 1), got {self.warmup}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UsageError(f"{where}: min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 1 <= self.start_width <= self.max_width:
            raise UsageError(f"{where}: need 1 <= start_width <= max_width, got {self.start_width} and {self.max_width}")
        if self.complexity != "off" and not self.model.split(":")[0] == "mlp":
            raise UsageError(f"{where}: complexity matching works on the mlp model, not {self.model!r}")


def resolve_device(device: str, where: str = "config") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"{where}: device {device!r} asked for, but CUDA is not available here; use cpu or auto")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UsageError(f"{where}: device {device!r} does not exist; {torch.cuda.device_count()} CUDA device(s) here")
        return torch.device(device)
    raise UsageError(f"{where}: unknown device {device!r}; use auto, cpu, cuda or cuda:N")


def _field_type(f: dataclasses.Field) -> Any:
    return typing.get_type_hints(RunConfig)[f.name]


def _check_type(key: str, value: Any, expected: Any, where: str) -> Any:
    allowed = typing.get_args(expected) if isinstance(expected, types.UnionType) else (expected,)
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise UsageError(f"{where}: {key} = {value!r} must be a finite number")
            return float(value)
        if t is not float and t is not type(None) and isinstance(value, t) and not (t is int and isinstance(value, bool)):
            return value
    names = " or ".join("none" if t is type(None) else t.__name__ for t in allowed)
    raise UsageError(f"{where}: {key} = {value!r} should be {names}")


def cli_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """(name, python type without None, field) for every RunConfig field, for building CLI flags."""
    out = []
    for f in dataclasses.fields(RunConfig):
        expected = _field_type(f)
        base = [t for t in typing.get_args(expected) if t is not type(None)] or [expected]
        out.append((f.name, base[0], f))
    return out
