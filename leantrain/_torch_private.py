"""Every private PyTorch API leantrain uses, in one place, each with why no public one will do.

If a PyTorch upgrade breaks one of these, this file is the only place to look. Checked on torch 2.13.0
(installed here; the whole test suite exercises each). pyproject allows torch>=2.4: these names are older
than 2.4 in PyTorch's history, but they have not been run on 2.4 here.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.autograd.variable import Variable as _Variable
from torch.overrides import has_torch_function_unary
from torch.utils._python_dispatch import TorchDispatchMode as _TorchDispatchMode

# A dispatch mode sees every op; the memory meter uses one to catch tensors that activation checkpointing
# recomputes inside backward, which saved-tensor hooks never see. No public base class exists.
TorchDispatchMode = _TorchDispatchMode

# The base class of BatchNorm1d/2d/3d, SyncBatchNorm and the lazy variants: one isinstance for all batch norms
# (the public classes have no common public base; LazyBatchNorm2d is not a BatchNorm2d).
BatchNormBase = nn.modules.batchnorm._BatchNorm

# Multi-tensor kernels: one launch for all of a model's gradients instead of one per tensor, for the
# noise-scale estimate every step. torch.linalg.vector_norm per tensor is the public, slower equivalent.
foreach_copy_ = torch._foreach_copy_
foreach_sub = torch._foreach_sub
foreach_norm = torch._foreach_norm


def inside_backward() -> bool:
    """True while autograd runs a backward pass: an op seen then, with grad enabled, is checkpoint recomputation.

    autograd exposes no public "is a graph task running" query; -1 means none.
    """
    return torch._C._current_graph_task_id() != -1


_AUTOGRAD_ENGINE = _Variable._execution_engine
_AUTOGRAD_LOG = logging.getLogger("torch.autograd.graph")  # at DEBUG, torch.autograd.backward hooks every node to log it


def engine_call_known(c_module: Any = torch._C) -> bool:
    """Whether this torch's ``torch.autograd.backward`` ends as ``backward_from`` does: the Python context stashed
    for the engine's device threads, the engine run, the stash removed (torch 2.13; the removal's function is newer
    than the stash's). Elsewhere ``backward_from`` is ``loss.backward``: right, without the saving."""
    return hasattr(c_module, "_stash_obj_in_tls") and hasattr(c_module, "_remove_obj_from_tls")


_ENGINE_CALL_KNOWN = engine_call_known()


def backward_from(loss: torch.Tensor, gradient: torch.Tensor) -> None:
    """``loss.backward(gradient)`` for the loop's own loss, a scalar, and the gradient the loop made for it, a scalar
    on its device: straight to the autograd engine, as ``torch.autograd.backward`` ends by doing.

    What it skips is Python the loop made redundant by making the gradient itself: the arguments made tuples, the
    gradient checked against the loss's shape (the engine checks it too, more loosely: a ``(1,)`` gradient of a
    scalar is summed, not refused), the autograd logger's level read. On the seed MLP at 1 thread it was worth
    about 4 points of the plain loop's speed at batch 64 and 2-3 at 512 (``benchmarks/framework_cost.py
    --paired``, its arm with the public backward): ~20 us a step at batch 64 and 30-50 us at 512, growing with the
    batch although the 28 Python calls a step it spares (``--ops``) do not; what else the public call costs is not
    pinned down. Whatever could intercept the public call still goes through ``loss.backward``:
    a tensor with a ``__torch_function__`` override, an active ``__torch_function__`` mode (``with
    torch.device(...)`` is one: right, without the saving), a ``torch.func`` transform, autograd's debug logging.
    """
    if (not _ENGINE_CALL_KNOWN or has_torch_function_unary(loss) or torch._C._are_functorch_transforms_active()
            or _AUTOGRAD_LOG.isEnabledFor(logging.DEBUG)):
        loss.backward(gradient)
        return
    torch._C._stash_obj_in_tls("context", contextvars.copy_context())  # compiler settings seen in device threads
    try:
        _AUTOGRAD_ENGINE.run_backward((loss,), (gradient,), False, False, (), allow_unreachable=True,
                                      accumulate_grad=True)
    finally:
        torch._C._remove_obj_from_tls("context")


def found_inf_flags(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> dict[Any, torch.Tensor] | None:
    """The scaler's on-device 0/1 "gradients held inf/NaN" flags for ``optimizer`` after ``unscale_``; None if unknown.

    Reading them counts skipped steps without a second pass over the gradients and without a host sync;
    the public ``get_scale()`` only shows the effect one step later, as a Python float (a sync).
    """
    try:
        return scaler._found_inf_per_device(optimizer)
    except (AttributeError, AssertionError, KeyError):
        return None


def non_finite_check_(tensors: list[torch.Tensor], found: torch.Tensor, one: torch.Tensor) -> None:
    """Set ``found`` (a float scalar on the tensors' device) to 1 if any of ``tensors`` (one device and dtype,
    dense) holds inf/NaN, in one fused pass: GradScaler's own unscale kernel with an inverse scale of 1 (``one``),
    which leaves every value as it is (x * 1.0 == x, NaN stays NaN).

    The non-finite guard runs it before every optimizer step of a CPU process; the public equivalents (a norm
    per tensor, or ``isfinite().all()`` per tensor) take several kernels each, ~2-3x the time on a small model.
    """
    torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, one)


def scale_tensor(scaler: torch.amp.GradScaler) -> torch.Tensor | None:
    """The loss scale as the scaler's device tensor (None before the first scaled step or when disabled).

    The public ``get_scale()`` returns a Python float, which waits for the device every step.
    """
    return scaler._scale if scaler.is_enabled() else None


def compiled_entries(code: Any) -> int:
    """How many compiled versions dynamo holds for a code object (a forward's ``__code__``); 0: none.

    ``torch.compile`` says nothing when dynamo skips a frame and runs it eagerly (a frame first called under a
    dispatch mode is skipped for the rest of the process), and its public counters do not see a cache hit (a
    second model of the same class reuses the first one's graph). The cache itself tells both.
    """
    try:
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list

        return len(_debug_get_cache_entry_list(code))
    except (ImportError, AttributeError, TypeError, RuntimeError):
        return 0


def _watch_compilations(start: Callable[[Any], None], end: Callable[[Any], None]) -> bool:
    """Have dynamo call ``start`` and ``end`` (each with dynamo's own argument) around each compilation: a frame
    traced and compiled (dynamo, AOT autograd, inductor), and a backward compiled at its first call. Registered
    once, and again after a ``torch._dynamo.reset()`` (which clears them); False where this torch has no such hook.

    ``torch.compile``'s public API reports no compile time; ``torch._dynamo.utils.compile_times()`` is a debug
    table of per-function timings that overlap (a backward's inside its forward's), not the wall time spent.
    """
    try:
        from torch._dynamo.callback import callback_handler
    except ImportError:
        return False
    if start not in callback_handler.start_callbacks:
        callback_handler.register_start_callback(start)
        callback_handler.register_end_callback(end)
    return True


class _CompileClock:
    """Seconds spent compiling, summed: inside dynamo's compilations and inside ``compiling()``, the outermost
    interval only where they nest."""

    def __init__(self) -> None:
        self.total = 0.0
        self._depth = 0
        self._since = 0.0

    def start(self, _: object = None) -> None:
        self._depth += 1
        if self._depth == 1:
            self._since = time.perf_counter()

    def end(self, _: object = None) -> None:
        if self._depth == 0:  # registered while a compilation ran: its start was not seen
            return
        self._depth -= 1
        if self._depth == 0:
            self.total += time.perf_counter() - self._since


_COMPILE_CLOCK = _CompileClock()


def compile_seconds() -> float:
    """Seconds this process has spent compiling with ``torch.compile`` so far: its set-up (``compiling()``), the
    tracing and code generation of a forward (its first call, a new input shape, eval mode) and of its backward
    (compiled at its first call). Read as differences: what lies between two readings was compilation, not
    training. Dynamo's compilations count from the first reading on (0.0 where this torch reports none)."""
    _watch_compilations(_COMPILE_CLOCK.start, _COMPILE_CLOCK.end)
    return _COMPILE_CLOCK.total


@contextlib.contextmanager
def compiling() -> Iterator[None]:
    """Time inside counts as compilation (``compile_seconds``): ``torch.compile``'s own set-up (its first call in a
    process imports the compiler, ~1.5 s here), which no dynamo callback covers."""
    _COMPILE_CLOCK.start()
    try:
        yield
    finally:
        _COMPILE_CLOCK.end()
