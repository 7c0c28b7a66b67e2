"""Mixed precision: bf16 autocast, or fp16 autocast with fp32 master weights and dynamic loss scaling.

The weights, gradients and optimizer state stay fp32 (the "master" copy); only the forward and backward
compute runs in the low-precision type. fp16's narrow exponent range underflows small gradients, so the
loss is multiplied by a scale before backward and the gradients divided by it before the optimizer
step; a step whose gradients hold inf/NaN is skipped and the scale backed off (torch.amp.GradScaler:
growth x2 every ``growth_interval`` clean steps, back-off x0.5). bf16 has fp32's range: no scaling.

The technique only configures the run's ``state.precision`` (``amp.Precision``: autocast, scaler, dtypes),
which the loop and the non-finite guard use. Skipped steps are counted on the device: the scaler's own
found-inf flag (set by ``unscale_``, which the loop calls before ``before_optimizer_step``) is added to a
device tensor, so no step waits for the device; the count is read once per epoch.

Not every CPU can run every op in a low-precision type: on one without bf16 hardware (AVX2 only),
oneDNN cannot build its fused LSTM/GRU primitive for bf16 and raises mid-run. So before training, each
recurrent layer type the model uses is tried once, tiny, under the run's autocast; a type that fails
keeps its layers in fp32 (autocast off inside them, inputs cast up), the way autocast's own op lists
keep some ops in fp32. The rest of the model still runs in the low-precision type, and the record
names the layers kept in fp32.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from leantrain.options import Option
from leantrain.techniques.amp import DTYPES, Precision
from leantrain.techniques.base import StepState, Technique
from leantrain.techniques.registry import register

# Layers that CPU autocast runs as one fused oneDNN primitive, which some CPUs cannot build in low precision.
RECURRENT_LAYERS: tuple[type[nn.Module], ...] = (nn.LSTM, nn.GRU, nn.RNN)


@functools.cache
def runs_in_low_precision(layer_type: type[nn.Module], device_type: str, dtype: torch.dtype) -> bool:
    """Whether a tiny ``layer_type`` trains (forward and backward) under autocast to ``dtype`` on this machine."""
    layer = layer_type(4, 4, batch_first=True).to(device_type)
    x = torch.randn(2, 3, 4, device=device_type, requires_grad=True)
    try:
        with torch.autocast(device_type, dtype=dtype):
            out = layer(x)[0]
        out.float().sum().backward()
    except RuntimeError:  # oneDNN: "could not create a primitive descriptor ..."
        return False
    return True


class _Fp32Forward(nn.Module):
    """Mixed into a layer's class: its forward runs with autocast off, on fp32 inputs."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        device_type = next(self.parameters()).device.type
        with torch.autocast(device_type, enabled=False):
            return super().forward(*_to_fp32(args), **_to_fp32(kwargs))


def _to_fp32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_to_fp32(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_fp32(v) for k, v in value.items()}
    return value


@functools.cache
def _fp32_class(layer_type: type[nn.Module]) -> type[nn.Module]:
    return type(f"Fp32{layer_type.__name__}", (_Fp32Forward, layer_type), {})


def keep_unsupported_in_fp32(model: nn.Module, device: torch.device, dtype: torch.dtype) -> list[str]:
    """Switch every recurrent layer whose type fails under autocast here to an fp32 forward; returns the names of
    every layer so kept (those switched before included: it may be called again on the same model).

    The class swap keeps parameters, names and state dicts as they were, and survives ``deepcopy``."""
    kept = []
    for name, module in model.named_modules():
        if isinstance(module, _Fp32Forward):
            kept.append(name or type(module).__name__)
            continue
        layer_type = next((t for t in RECURRENT_LAYERS if type(module) is t), None)
        if layer_type is not None and not runs_in_low_precision(layer_type, device.type, dtype):  # type: ignore[arg-type]
            module.__class__ = _fp32_class(layer_type)  # type: ignore[arg-type]
            kept.append(name or type(module).__name__)
    return kept


def _positive_or_none(max_norm: float | None) -> float | None:
    if max_norm is not None and not max_norm > 0:
        raise ValueError(f"grad_clip must be > 0 (or none), got {max_norm}")
    return max_norm


@register
class MixedPrecision(Technique):
    name = "precision"
    summary = "mixed precision: bf16 autocast, or fp16 autocast + fp32 master weights + dynamic loss scaling"
    options = (
        Option("precision", str, "fp32", "compute precision: fp32, bf16 autocast, fp16 autocast with loss scaling, or "
               "auto (the fastest of them whose loss keeps with fp32's, timed on this machine and model)",
               choices=("fp32", "bf16", "fp16", "auto")),
    )
    runs_after = ("complexity",)  # the scaler steps the optimizer complexity matching may replace
    parallel_modes = frozenset({"none", "ddp", "mpi", "fsdp", "pipeline", "hybrid", "ensemble"})
    changes_model = True  # recurrent layers this CPU cannot run in the low precision are kept in fp32

    @classmethod
    def from_config(cls, config: Any) -> MixedPrecision | None:
        # "auto" is resolved (leantrain.tuning, in run.py) to one of the others before techniques are built.
        return cls(config.precision) if config.precision in DTYPES else None

    @classmethod
    def is_switched_on(cls, config: Any) -> bool:
        return config.precision != "fp32"  # "auto" too: it may choose a low precision

    def __init__(self, precision: str = "bf16", init_scale: float = 2.0**16, growth_interval: int = 2000):
        if precision not in DTYPES:
            raise ValueError(f"precision {precision!r} is not one of: {', '.join(DTYPES)}")
        self.precision, self.init_scale, self.growth_interval = precision, init_scale, growth_interval
        self._skipped: torch.Tensor | int = 0  # a device tensor once counting starts
        self._skipped_before_epoch = 0  # the count when this epoch began: an epoch's record has its own count
        self._saved_scaler: dict[str, Any] | None = None  # from a checkpoint, applied in on_fit_start
        self._precision: Precision | None = None  # the run's, once fp16 has configured it
        self.kept_fp32: list[str] = []  # layers this machine cannot run in the low-precision type

    def describe(self) -> str:
        return self.precision

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped for inf/NaN gradients so far, every epoch's (reading it syncs with the device)."""
        return int(self._skipped)

    def prepare(self, model: nn.Module, device: torch.device) -> None:
        self.kept_fp32 = keep_unsupported_in_fp32(model, device, DTYPES[self.precision])

    def on_fit_start(self, state: StepState) -> None:
        precision = state.precision
        precision.check_master_weights(state.model)
        precision.use(DTYPES[self.precision], loss_scaling=self.precision == "fp16", init_scale=self.init_scale,
                      growth_interval=self.growth_interval)
        self.prepare(state.model, state.device)  # again: a loop started without a Run, or a rebuilt model
        if self.precision == "fp16":
            if self._saved_scaler:
                precision.scaler.load_state_dict(self._saved_scaler)
            self._precision = precision
            self._skipped = torch.as_tensor(self._skipped, dtype=torch.int64, device=state.device)

    def before_optimizer_step(self, state: StepState) -> None:
        if self.precision == "fp16":
            flag = state.precision.found_inf(state.optimizer)
            if flag is not None:
                self._skipped += flag.to(torch.int64)  # in place, on device: no sync

    def on_epoch_end(self, state: StepState, record: dict[str, Any]) -> None:
        if self.kept_fp32:
            record["kept_fp32"] = self.kept_fp32
        if self.precision == "fp16":
            record["loss_scale"] = state.precision.loss_scale()
            total = self.skipped_steps
            record["skipped_steps"] = total - self._skipped_before_epoch  # this epoch's, as nonfinite_skipped_steps
            self._skipped_before_epoch = total

    def state_dict(self) -> dict[str, Any]:
        scaler = self._precision.scaler.state_dict() if self._precision else None
        return {"skipped_steps": self.skipped_steps, "skipped_before_epoch": self._skipped_before_epoch,
                "grad_scaler": scaler}

    def load_state_dict(self, saved: dict[str, Any], state: StepState) -> None:
        self._skipped = saved["skipped_steps"]
        self._skipped_before_epoch = saved.get("skipped_before_epoch", 0)  # absent from older checkpoints
        self._saved_scaler = saved["grad_scaler"]


@register
class GradClip(Technique):
    """Clip the global gradient norm to ``max_norm`` before each optimizer step.

    Runs in ``before_optimizer_step``, after the loop's ``precision.unscale_``: the norm is of the true
    gradients, never of fp16-scaled ones. A step with inf/NaN gradients is skipped by the scaler anyway.
    """

    name = "grad_clip"
    summary = "clip the global gradient norm to a maximum (after fp16 unscaling)"
    options = (
        Option("grad_clip", float | None, None, "clip the gradient norm to this max (after fp16 unscaling); none: no clipping",
               check=_positive_or_none),
    )
    # Clipping sees the gradients after every technique that inspects them (the noise scale needs them unclipped).
    runs_after = ("precision", "accumulation")
    # Pipeline stages hold a part of the model each: the norm here would be one stage's, not the global one.
    parallel_modes = frozenset({"none", "ddp", "mpi", "fsdp", "ensemble"})

    @classmethod
    def from_config(cls, config: Any) -> GradClip | None:
        return cls(config.grad_clip) if config.grad_clip is not None else None

    def __init__(self, max_norm: float = 1.0):
        if not max_norm > 0:
            raise ValueError(f"grad_clip max_norm must be > 0, got {max_norm}")
        self.max_norm = max_norm

    def describe(self) -> str:
        return f"clip{self.max_norm:g}"

    def before_optimizer_step(self, state: StepState) -> None:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), self.max_norm, foreach=True)
