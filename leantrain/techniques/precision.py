"""Mixed precision: bf16 autocast, or fp16 autocast with fp32 master weights and dynamic loss scaling.

The weights, gradients and optimizer state stay fp32 (the "master" copy); only the forward and backward
compute runs in the low-precision type. fp16's narrow exponent range underflows small gradients, so the
loss is multiplied by a scale before backward and the gradients divided by it before the optimizer
step; a step whose gradients hold inf/NaN is skipped and the scale backed off (torch.amp.GradScaler:
growth x2 every ``growth_interval`` clean steps, back-off x0.5). bf16 has fp32's range: no scaling.
"""
from __future__ import annotations

from typing import Any

import torch

from leantrain.techniques.base import Technique

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_for(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context for a precision; disabled (a no-op) for fp32."""
    return torch.autocast(device.type, dtype=DTYPES.get(precision, torch.bfloat16), enabled=precision in DTYPES)


def compute_dtype(precision: str) -> torch.dtype:
    return DTYPES.get(precision, torch.float32)


class MixedPrecision(Technique):
    name = "precision"

    def __init__(self, precision: str = "bf16", init_scale: float = 2.0**16, growth_interval: int = 2000):
        if precision not in DTYPES:
            raise ValueError(f"precision {precision!r} is not one of: {', '.join(DTYPES)}")
        self.precision, self.init_scale, self.growth_interval = precision, init_scale, growth_interval
        self.skipped_steps = 0
        self._saved_scaler: dict[str, Any] | None = None  # from a checkpoint, applied in on_fit_start
        self._scaler: torch.amp.GradScaler | None = None

    def describe(self) -> str:
        return self.precision

    def on_fit_start(self, state) -> None:
        device, precision = state.device, self.precision
        state.autocast = lambda: autocast_for(device, precision)
        state.compute_dtype = DTYPES[precision]
        if precision == "fp16":
            state.grad_scaler = torch.amp.GradScaler(
                device.type, init_scale=self.init_scale, growth_interval=self.growth_interval
            )
            if self._saved_scaler:
                state.grad_scaler.load_state_dict(self._saved_scaler)
            self._scaler = state.grad_scaler

    def before_optimizer_step(self, state) -> None:
        self._scale_before = state.grad_scaler.get_scale() if self.precision == "fp16" else None

    def after_optimizer_step(self, state) -> None:
        # GradScaler lowers its scale exactly when it skipped the step for inf/NaN gradients.
        if self._scale_before is not None and state.grad_scaler.get_scale() < self._scale_before:
            self.skipped_steps += 1

    def on_epoch_end(self, state, record: dict[str, Any]) -> None:
        if self.precision == "fp16":
            record["loss_scale"] = state.grad_scaler.get_scale()
            record["skipped_steps"] = self.skipped_steps

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps, "grad_scaler": self._scaler.state_dict() if self._scaler else None}

    def load_state_dict(self, saved: dict[str, Any], state) -> None:
        self.skipped_steps = saved["skipped_steps"]
        self._saved_scaler = saved["grad_scaler"]

