"""Data parallelism with PyTorch's DistributedDataParallel: the parallel-wrap step of model preparation.

It runs after the techniques that change the model (complexity matching, precision fallbacks,
activation checkpointing) and before compilation, so ``compile`` compiles ``DDP(model)`` as PyTorch
advises. ``state.model`` stays the bare module (plain checkpoint names, and techniques edit it);
``state.forward`` becomes the DDP module; evaluation uses the bare forward, so ranks may evaluate
different numbers of batches without DDP's buffer broadcasts waiting on each other.

A technique that rebuilds the model's layers (complexity matching, at an epoch end) leaves DDP holding
hooks on parameters that no longer train: the wrap is redone whenever the parameters change. Ranks
agree on the change, since it follows validation metrics that are reduced over all ranks, and DDP's
constructor broadcasts rank 0's new weights.
"""
from __future__ import annotations

import contextlib
from typing import Any

from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from leantrain.parallel.plan import ModeHooks
from leantrain.techniques.base import StepState

# Gradients cast to a 16-bit type for the all-reduce (half the bytes), averaged, cast back: PyTorch's own hooks.
COMPRESSION_HOOKS = {"bf16": default_hooks.bf16_compress_hook, "fp16": default_hooks.fp16_compress_hook}


def wrap_ddp(module: nn.Module, *, device_type: str, bucket_cap_mb: float = 25.0, gradient_as_bucket_view: bool = True,
             static_graph: bool = False, compress: str = "none") -> DistributedDataParallel:
    """DDP over ``module``; gradients as views of the all-reduce buckets (one copy less per step); ``compress``
    bf16 or fp16: the gradients all-reduced in that type."""
    ddp = DistributedDataParallel(
        module, device_ids=None if device_type == "cpu" else [next(module.parameters()).device],
        bucket_cap_mb=bucket_cap_mb, gradient_as_bucket_view=gradient_as_bucket_view, static_graph=static_graph,
    )
    if compress != "none":
        ddp.register_comm_hook(state=None, hook=COMPRESSION_HOOKS[compress])
    return ddp


def release_reducer(ddp: DistributedDataParallel) -> None:
    """Free ``ddp``'s C++ reducer and its logger now, whoever still holds the module (a traceback's frames): called
    while the process group is joined, so that the reducer never holds the group's last reference (see
    ``DataParallel.release``). The module trains no more after it."""
    ddp._remove_autograd_hooks()
    ddp.reducer = ddp.logger = None


def _parameter_ids(model: nn.Module) -> tuple[int, ...]:
    return tuple(id(p) for p in model.parameters())


class DataParallel(ModeHooks):
    name = "ddp"
    parallel_modes = frozenset({"ddp"})

    def __init__(self, **ddp_options: Any):
        self.ddp_options = ddp_options
        self.ddp: DistributedDataParallel | None = None
        self._wrapped: tuple[int, ...] = ()

    def describe(self) -> str:
        """'ddp', with the knobs that differ from wrap_ddp's defaults: 'ddp(bucket_cap_mb=100,static_graph)'."""
        defaults = {"bucket_cap_mb": 25.0, "gradient_as_bucket_view": True, "static_graph": False, "compress": "none"}
        changed = [k if v is True else f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in self.ddp_options.items() if defaults.get(k) != v]
        return f"ddp({','.join(changed)})" if changed else "ddp"

    def on_fit_start(self, state: StepState) -> None:
        self._wrap(state)

    def _wrap(self, state: StepState) -> None:
        state.eval_forward = state.model
        self.ddp = wrap_ddp(state.model, device_type=state.device.type, **self.ddp_options)
        self._wrapped = _parameter_ids(state.model)
        state.forward = self.ddp
        state.no_sync = self.ddp.no_sync

    def on_epoch_end(self, state: StepState, record: dict[str, Any]) -> None:
        if _parameter_ids(state.model) != self._wrapped:  # the layers were rebuilt: DDP must hook the new ones
            self._wrap(state)

    def on_fit_end(self, state: StepState) -> None:
        state.forward, state.eval_forward, state.no_sync = state.model, None, contextlib.nullcontext
        self.release()

    def release(self) -> None:
        """Free DDP's C++ reducer (and the logger holding it) now, while the process group is joined.

        A failed fit leaves the DDP module referenced by the traceback's frames until the caller lets go of
        the exception: after the group is left. The reducer then holds the group's last reference, and
        freeing it joins gloo's worker threads with the GIL held; a worker still dropping a finished
        all-reduce's tensors waits for the GIL, and the rank hangs at exit (seen one run in three: a NaN on
        one of two ranks). Freed here, the group's last reference is Python's, whose destructor lets go of the
        GIL first."""
        if self.ddp is not None:
            release_reducer(self.ddp)
        self.ddp = None
