"""How a training step computes: one ``Precision`` object per run, at ``state.precision``.

It owns the autocast context the forward pass runs in, the compute dtype, the dtype gradients accumulate
in (the fp32 master weights'), and fp16's loss scaler (scale -> unscale -> step -> update). The loop calls
it for every step; the non-finite guard asks it whether the scaler already checks the gradients; the
MixedPrecision technique switches it to a low-precision type. fp32 (the default) is a no-op at every call.
"""
from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from leantrain._torch_private import found_inf_flags, scale_tensor
from leantrain.errors import UsageError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NO_CONTEXT = contextlib.nullcontext()  # a context that does nothing; it holds no state, so one serves every step


def autocast_for(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context for a precision; disabled (a no-op) for fp32."""
    return torch.autocast(device.type, dtype=DTYPES.get(precision, torch.bfloat16), enabled=precision in DTYPES)


def compute_dtype(precision: str) -> torch.dtype:
    return DTYPES.get(precision, torch.float32)


class Precision:
    """fp32 until ``use`` switches it to bf16 or fp16 (with dynamic loss scaling for fp16)."""

    # Gradients accumulate over micro-batches in the master weights' dtype, never in the compute dtype
    # (bf16 accumulation loses low bits at every add: a bug peer trainers shipped).
    grad_dtype = torch.float32

    def __init__(self, device: torch.device):
        self.device = device
        self.compute_dtype = torch.float32
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)

    def use(self, dtype: torch.dtype, *, loss_scaling: bool = False, init_scale: float = 2.0**16,
            growth_interval: int = 2000) -> None:
        """Compute in ``dtype`` under autocast; with ``loss_scaling`` (fp16), through a fresh GradScaler."""
        self.compute_dtype = dtype
        if loss_scaling:
            self.scaler = torch.amp.GradScaler(self.device.type, init_scale=init_scale, growth_interval=growth_interval)

    def check_master_weights(self, model: nn.Module) -> None:
        """Mixed precision keeps the weights (and so the gradients) in ``grad_dtype``; refuse a model cast down."""
        for name, param in model.named_parameters():
            if param.is_floating_point() and param.dtype != self.grad_dtype:
                raise UsageError(f"mixed precision keeps {self.grad_dtype} master weights, but parameter {name!r} is "
                                 f"{param.dtype}: pass the model in {self.grad_dtype} (autocast does the casting)")

    @property
    def mixed(self) -> bool:
        return self.compute_dtype != torch.float32

    def autocast(self) -> AbstractContextManager[Any]:
        """The context a forward pass runs in: autocast to the compute dtype; for fp32, nothing (not a disabled
        autocast, which would switch off one the caller entered)."""
        return torch.autocast(self.device.type, dtype=self.compute_dtype) if self.mixed else NO_CONTEXT

    @property
    def scaler_checks_grads(self) -> bool:
        """Whether the loss scaler already finds inf/NaN gradients (and skips their step): fp16 only."""
        return self.scaler.is_enabled()

    # Without loss scaling the loop calls the optimizer itself: a disabled GradScaler's three calls a step are
    # ~1.5 us of Python that returns what it was given.
    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler.is_enabled() else loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler.is_enabled():
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step (skipped by the scaler if the gradients held inf/NaN), then the scale's update."""
        if not self.scaler.is_enabled():
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def found_inf(self, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        """The scaler's on-device 0/1 flag "this step's gradients held inf/NaN", after ``unscale_``; None if unknown.

        Reading the scaler's own per-optimizer flags avoids a second pass over the gradients and any host sync.
        """
        flags = found_inf_flags(self.scaler, optimizer)
        return torch.stack(list(flags.values())).sum() if flags else None

    def scale_tensor(self) -> torch.Tensor | None:
        """The loss scale as a device tensor (no host sync); None without loss scaling or before the first step."""
        return scale_tensor(self.scaler)

    def loss_scale(self) -> float | None:
        """The loss scale as a number (a host sync on CUDA); None without loss scaling."""
        return self.scaler.get_scale() if self.scaler.is_enabled() else None
