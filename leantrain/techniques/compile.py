"""torch.compile as a switch, with eager mode as the fallback.

Only ``state.forward`` (what the loop calls) becomes the compiled module; ``state.model`` stays the raw
module, so checkpoints hold plain parameter names and other techniques keep editing the real model.
Compilation happens lazily, at the first forward: if that fails (no C++ compiler, an unsupported
op, no torch.compile at all), a warning says why and training goes on in eager mode.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from leantrain.options import Option
from leantrain.techniques.base import StepState, Technique
from leantrain.techniques.registry import register


class CompiledForward:
    """Calls ``torch.compile(model)``; on a failure before the first success, warns and calls ``model`` from then on."""

    def __init__(self, model: Callable[..., Any], mode: str | None = None):
        self.model = model
        self.compiled: Callable[..., Any] | None = None
        self.verified = False
        self.error: str | None = None
        compile_fn = getattr(torch, "compile", None)
        if compile_fn is None:
            self._give_up("torch.compile is not available in this PyTorch")
            return
        try:
            self.compiled = compile_fn(model, mode=mode)
        except Exception as e:  # noqa: BLE001  (any failure means: run eagerly)
            self._give_up(f"{type(e).__name__}: {e}")

    def _give_up(self, why: str) -> None:
        self.error = why.splitlines()[0][:300] if why else "unknown error"
        self.compiled = None
        warnings.warn(f"torch.compile failed, training in eager mode instead ({self.error})", RuntimeWarning, stacklevel=3)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.model(*args, **kwargs)
        if self.verified:
            return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            self._give_up(f"{type(e).__name__}: {e}")
            return self.model(*args, **kwargs)
        self.verified = True
        return out


@register
class Compile(Technique):
    name = "compile"
    summary = "torch.compile the forward pass; eager mode with a warning where it fails"
    options = (Option("compile", bool, False, "torch.compile the model (eager mode, with a warning, where it fails)"),)
    runs_after = ("complexity", "checkpointing", "ddp")  # compile the model as the others leave it (DDP: compile(DDP))
    # A pipeline's schedule calls its stage module, not the loop's forward; FSDP + compile is untested here.
    parallel_modes = frozenset({"none", "ddp", "mpi", "ensemble"})

    @classmethod
    def from_config(cls, config: Any) -> Compile | None:
        return cls() if config.compile else None

    def __init__(self, mode: str | None = None):
        self.mode = mode
        self.forward: CompiledForward | None = None

    def describe(self) -> str:
        return "compile" if self.mode is None else f"compile-{self.mode}"

    def on_fit_start(self, state: StepState) -> None:
        self.forward = CompiledForward(state.forward, self.mode)  # under DDP: compile(DDP(model)), as torch advises
        state.forward = self.forward

    def on_epoch_end(self, state: StepState, record: dict[str, Any]) -> None:
        record["compiled"] = self.forward is not None and self.forward.compiled is not None

    def on_fit_end(self, state: StepState) -> None:
        state.forward = state.model
