"""torch.compile as a switch, with eager mode as the fallback.

Only ``state.forward`` (what the loop calls) becomes the compiled module; ``state.model`` stays the raw
module, so checkpoints hold plain parameter names and other techniques keep editing the real model.
Compilation happens lazily, at the first forward (``torch.compile`` itself too: its first call in a process
imports the compiler), timed as compilation, not training (``compile_s`` in the epoch record, see
``leantrain/train/loop.py``): if it fails (no C++ compiler, an unsupported op, no torch.compile at all), a
warning says why and training goes on in eager mode.

``torch.compile`` can also fail silently: dynamo skips a frame it cannot handle and runs it eagerly, with
no error. So the first call is checked for what it did, not for the absence of an exception: a forward
pre-hook notes a call that ran outside dynamo, and dynamo's cache must hold compiled code for the forward.
Either failing, the record says ``compiled: false`` with the reason (``compile_error``), and a warning says so.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from leantrain._torch_private import compiled_entries, compiling
from leantrain.options import Option
from leantrain.techniques.base import StepState, Technique
from leantrain.techniques.registry import register


class CompiledForward:
    """Calls ``torch.compile(model)``; on a failure before the first success, warns and calls ``model`` from then on."""

    def __init__(self, model: Callable[..., Any], mode: str | None = None):
        self.model = model
        self.mode = mode
        self.compiled: Callable[..., Any] | None = None
        self.started = False  # torch.compile called (at the first forward)
        self.verified = False
        self.error: str | None = None
        self.ran_eagerly = False  # set by the probe: a call of the model's forward outside dynamo
        self._probe_handle: torch.utils.hooks.RemovableHandle | None = None

    def _start(self) -> None:
        """``torch.compile(model)``, timed as compilation; a failure leaves the model eager."""
        self.started = True
        compile_fn = getattr(torch, "compile", None)
        if compile_fn is None:
            self._give_up("torch.compile is not available in this PyTorch")
            return
        try:
            with compiling():
                self.compiled = compile_fn(self.model, mode=self.mode)
        except Exception as e:  # noqa: BLE001  (any failure means: run eagerly)
            self._give_up(f"{type(e).__name__}: {e}")
            return
        if isinstance(self.model, nn.Module):
            # Kept for the run (removing a hook changes what dynamo guards on, and would recompile); see close().
            self._probe_handle = self.model.register_forward_pre_hook(self._probe)

    def close(self) -> None:
        """Remove the probe: the model goes back to its owner as it came."""
        if self._probe_handle is not None:
            self._probe_handle.remove()
            self._probe_handle = None

    def _probe(self, module: nn.Module, args: Any) -> None:
        if not torch.compiler.is_compiling():  # traced, the branch is dropped: compiled code never sets it
            self.ran_eagerly = True

    def _traced_nothing(self) -> bool:
        """Whether the first call ran without compiled code: eagerly, or with nothing in dynamo's cache."""
        if self.ran_eagerly:
            return True
        forward = type(self.model).forward if isinstance(self.model, nn.Module) else self.model
        code = getattr(forward, "__code__", None)
        return code is not None and compiled_entries(code) == 0

    def _give_up(self, why: str) -> None:
        self.error = why.splitlines()[0][:300] if why else "unknown error"
        self.compiled = None
        warnings.warn(f"torch.compile failed, training in eager mode instead ({self.error})", RuntimeWarning, stacklevel=3)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.started:
            self._start()
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
        if self._traced_nothing():
            self._give_up("dynamo compiled no graph of the forward; it ran eagerly (run with TORCH_LOGS=dynamo "
                          "to see why)")
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
        if self.forward is not None and self.forward.error:
            record["compile_error"] = self.forward.error

    def on_fit_end(self, state: StepState) -> None:
        if self.forward is not None:
            self.forward.close()
        state.forward = state.model
