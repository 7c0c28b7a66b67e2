"""How activation checkpointing recomputes (techniques/checkpointing.py chooses what): a module's forward, or a
segment of consecutive children of an ``nn.Sequential``, run under ``torch.utils.checkpoint`` (non-reentrant), and
selective checkpointing's policy.

Two wrappers, both set as an instance's ``forward`` so that every name stays plain:

- ``CheckpointedForward``: one module recomputed as a whole (any module, whatever its parent's forward does).
- ``SegmentedForward``: an ``nn.Sequential``'s own forward, whose order is known (each child's output is the next
  one's input), running its blocks in segments of consecutive children, one checkpoint each: a segment keeps only its
  input, so √L segments of L blocks keep ~2√L blocks' worth (Chen et al. 2016) where one checkpoint per block keeps
  every block's input (all a Linear + ReLU block saves anyway).

Selective checkpointing (torch.utils.checkpoint's selective policy) keeps some outputs of matrix products,
convolutions and attention and recomputes the rest. Which ones is measured once per wrapper, at its first training
forward, by a probe (one plain forward of the region, its saved tensors and its products' outputs seen): an output
is kept only where the plain forward saves it too (a GELU's input, a batch norm's input, attention's q, k, v), and of
those every second matrix product or convolution is recomputed (torchtitan's rule), so selective never holds more
than no checkpointing. A region whose input and kept outputs would hold as much as its plain forward saves runs
plain (a Linear + ReLU block), and an ``nn.Sequential``'s blocks are grouped into segments of g blocks, g minimising
(L/g)·input + g·recomputed as in Chen et al., from the probe's measured bytes.

Under ``torch.compile`` dynamo traces through both wrappers: each region becomes a plain non-reentrant checkpoint,
which the compiled backward recomputes (torch.compile's partitioner; the forward's buffer updates, batch norm's
running statistics, are not replayed there). The probe and the policy's bookkeeping run eagerly only, so a region
compiled before any eager training forward is recomputed whole.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from leantrain._torch_private import BatchNormBase, TorchDispatchMode


def _aten_ops(names: tuple[str, ...]) -> frozenset[Any]:
    ops = []
    for name in names:
        with contextlib.suppress(AttributeError, RuntimeError):  # an op this build of torch lacks
            ops.append(getattr(torch.ops.aten, name).default)
    return frozenset(ops)


# Matrix products and convolutions: the costly ops whose outputs selective checkpointing may keep, every second one.
PRODUCTS = _aten_ops(("mm", "addmm", "bmm", "baddbmm", "convolution"))
# Fused attention: kept whenever the plain forward saves its output (it always does), as torchtitan keeps it.
ATTENTION = _aten_ops(("_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_for_cpu",
                       "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
                       "_scaled_dot_product_fused_attention_overrideable"))
SAVED_OPS = PRODUCTS | ATTENTION
Plan = list[tuple[list[str], bool]]  # a Sequential's children in order, in groups: (names, recomputed as one segment)


# --- around a recomputation -----------------------------------------------------------------------------------------

class RunningStatsFrozen:
    """Around a recomputation (or a probe): batch norm runs the same code (so it saves the same tensors) with momentum
    0, which leaves its running statistics exactly as they were; the step counter is put back afterwards. Re-entrant
    (a second backward through a kept graph recomputes again); its tensor ops run outside the selective policy's
    dispatch mode, which refuses ops the forward did not run."""

    def __init__(self, modules: list[nn.Module]):
        self.norms = [m for b in modules for m in b.modules() if isinstance(m, BatchNormBase) and m.track_running_stats]
        self.saved: list[list[tuple[float | None, torch.Tensor]]] = []

    def __enter__(self) -> None:
        self.saved.append([(m.momentum, cast(torch.Tensor, m.num_batches_tracked).clone()) for m in self.norms])
        for m in self.norms:
            m.momentum = 0.0

    def __exit__(self, *exc: object) -> None:
        for m, (momentum, tracked) in zip(self.norms, self.saved.pop()):
            m.momentum = momentum
            cast(torch.Tensor, m.num_batches_tracked).copy_(tracked)


class _InOrder:
    """Context managers entered in the order given (the first outermost), as one; re-entrant where they are."""

    def __init__(self, *managers: AbstractContextManager[Any]):
        self.managers = managers
        self.stacks: list[contextlib.ExitStack] = []

    def __enter__(self) -> None:
        stack = contextlib.ExitStack()
        for manager in self.managers:
            stack.enter_context(manager)
        self.stacks.append(stack)

    def __exit__(self, *exc: object) -> None:
        self.stacks.pop().close()


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata  # a storage's identity, as the activation meter counts it


def _bytes(tensors: list[torch.Tensor], leave_out: set[int]) -> int:
    """Bytes of the tensors' storages, each once, those of ``leave_out`` not counted."""
    storages = {_key(t): t.untyped_storage().nbytes() for t in tensors if t.device.type != "meta"}
    return sum(n for key, n in storages.items() if key not in leave_out)


# --- selective checkpointing's policy -------------------------------------------------------------------------------

def _policy(keep: list[bool], kept: list[torch.Tensor]) -> Callable[..., CheckpointPolicy]:
    """Keep the output of the i-th call of a SAVED_OPS op where ``keep[i]``, recompute everything else. What the
    forward keeps is listed in ``kept`` too, for the saved-tensor hooks. Calls are counted apart in forward and
    recomputation (torch before 2.13 asks the policy again while recomputing)."""
    counters = {False: itertools.count(), True: itertools.count()}

    def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
        if op not in SAVED_OPS:
            return CheckpointPolicy.PREFER_RECOMPUTE
        index = next(counters[bool(ctx.is_recompute)])
        if index >= len(keep) or not keep[index]:
            return CheckpointPolicy.PREFER_RECOMPUTE
        if not ctx.is_recompute:
            kept.extend(t.detach() for t in _tensors(getattr(ctx, "op_output", None)))
        return CheckpointPolicy.MUST_SAVE

    return policy


class _CacheVisible(torch.autograd.Function):
    """Passes ``x`` through and saves ``cached`` for backward. Selective checkpointing keeps the outputs it saves in
    a cache of its own, which no saved-tensor hook sees; saved here too, they reach the hooks (leantrain's activation
    meter) while the region's graph lives (until just before its recomputation: a slight undercount there). A copy
    of ``x`` goes out, not a view: the caller may change it in place (``x += 1``), which autograd forbids on a view a
    custom Function made; ``x`` itself is freed once the copy is made."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, *cached: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(*cached)
        ctx.count = len(cached)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (grad, *([None] * ctx.count))


def _show_cache(output: Any, cached: list[torch.Tensor]) -> Any:
    """``output`` (a tensor, or a tuple/list led by one, as Hugging Face layers return) through _CacheVisible."""
    if isinstance(output, torch.Tensor) and output.requires_grad and cached:
        return _CacheVisible.apply(output, *cached)
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return type(output)([_show_cache(output[0], cached), *output[1:]])
    return output


# --- the probe ------------------------------------------------------------------------------------------------------

@dataclass
class Probe:
    """One plain forward of a region, measured: which product outputs selective checkpointing keeps, and bytes."""

    keep: list[bool] = field(default_factory=list)  # per call of a SAVED_OPS op, in forward order
    input_bytes: int = 0  # the region's tensor inputs: what a checkpoint keeps
    kept_bytes: int = 0  # the outputs ``keep`` keeps
    saved_bytes: int = 0  # what the plain forward saves for backward; parameters and the region's output left out

    @property
    def recomputed_bytes(self) -> int:
        return max(0, self.saved_bytes - self.kept_bytes)

    @property
    def worth_it(self) -> bool:
        """Checkpointed alone, the region would hold less than its plain forward saves."""
        return self.input_bytes + self.kept_bytes < self.saved_bytes


class _ProductOutputs(TorchDispatchMode):
    """The outputs of the SAVED_OPS ops, in call order, with their version counters then; held until the probe ends
    (a storage freed meanwhile would hand its identity to a new one)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, list[torch.Tensor], list[int]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        if func in SAVED_OPS:
            self.calls.append((func, _tensors(out), [t._version for t in _tensors(out)]))
        return out


def _decide(calls: list[tuple[Any, list[torch.Tensor], list[int]]], saved: set[int]) -> list[bool]:
    """Keep an output the plain forward saves too, except every second matrix product or convolution (torchtitan).
    Never one changed in place afterwards (a ReLU(inplace=True) after a conv): the policy's cache refuses it."""
    keep, products = [], 0
    for func, outputs, versions in calls:
        changed = any(t._version != v for t, v in zip(outputs, versions))
        wanted = not changed and any(_key(t) in saved for t in outputs)
        if wanted and func in PRODUCTS:
            products += 1
            wanted = products % 2 == 1
        keep.append(wanted)
    return keep


def probe(forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], modules: list[nn.Module]) -> tuple[Probe, Any]:
    """Run ``forward`` once as plain training would (grad on, random state and batch-norm statistics put back) and
    measure it; returns the probe and the output, detached (the next block's probe input)."""
    saved: dict[int, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[_key(tensor)] = tensor
        return tensor

    seen = _ProductOutputs()
    cuda = sorted({t.device.index or 0 for t in _tensors((args, kwargs)) if t.is_cuda})
    with torch.random.fork_rng(devices=cuda), RunningStatsFrozen(modules), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), seen:
        output = forward(*args, **kwargs)
    state = {_key(t) for m in modules for t in itertools.chain(m.parameters(), m.buffers())}
    leave_out = state | {_key(t) for t in _tensors(output)}
    keep = _decide(seen.calls, set(saved))
    kept = [t for (_, outputs, _), k in zip(seen.calls, keep) if k for t in outputs]
    result = Probe(keep, _bytes(_tensors((args, kwargs)), state), _bytes(kept, leave_out),
                   _bytes(list(saved.values()), leave_out))
    return result, _detached(output)


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().requires_grad_(value.requires_grad)
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    return value


# --- the wrappers ---------------------------------------------------------------------------------------------------

def _checkpointed(run: Callable[..., Any], modules: list[nn.Module], keep: list[bool] | None, *args: Any,
                  **kwargs: Any) -> Any:
    """``run(*args, **kwargs)`` under checkpoint, batch norm frozen in the recomputation; under the selective policy
    where ``keep`` keeps something (its kept outputs shown to the saved-tensor hooks)."""
    kept: list[torch.Tensor] = []

    def contexts() -> tuple[Any, Any]:
        frozen = RunningStatsFrozen(modules)
        if not keep or not any(keep):
            return contextlib.nullcontext(), frozen
        forward, recompute = create_selective_checkpoint_contexts(_policy(keep, kept))
        return forward, _InOrder(frozen, recompute)

    output = checkpoint(run, *args, use_reentrant=False, context_fn=contexts, **kwargs)
    if kept:
        output = _show_cache(output, kept)
        kept.clear()  # held by selective checkpointing's own cache from here, and by _CacheVisible
    return output


class CheckpointedForward:
    """A module's ``forward`` while it is checkpointed: its own forward under ``torch.utils.checkpoint``
    (non-reentrant: autocast, keyword arguments and inputs that need no grad all work), with grad enabled only;
    without grad nothing is saved, so nothing is recomputed. Selective: probed at the first call of each mode
    (training, eval), and run plain where checkpointing it would not save memory."""

    def __init__(self, module: nn.Module, selective: bool):
        self.module = module
        self.selective = selective
        self.previous: Callable[..., Any] | None = module.__dict__.get("forward")  # an instance's own, kept
        self.probes: dict[bool, Probe] = {}  # by training mode

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        forward = self.previous or functools.partial(type(self.module).forward, self.module)
        return forward(*args, **kwargs)

    @property
    def active(self) -> bool:
        """Recomputed in backward: always, except a selective one its probe found not worth it."""
        found = self.probes.get(self.module.training)
        return found is None or found.worth_it

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():  # traced by dynamo: what it can trace (see the module's docstring)
            if not (torch.is_grad_enabled() and self.active):
                return self._forward(*args, **kwargs)
            return checkpoint(self._forward, *args, use_reentrant=False, **kwargs)
        return self._eager(*args, **kwargs)

    @torch.compiler.disable  # never traced: the compiled path above is the traced one
    def _eager(self, *args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return self._forward(*args, **kwargs)
        if self.selective and self.module.training not in self.probes:
            self.probes[self.module.training], _ = probe(self._forward, args, kwargs, [self.module])
        found = self.probes.get(self.module.training)
        if found is not None and not found.worth_it:
            return self._forward(*args, **kwargs)
        return _checkpointed(self._forward, [self.module], found.keep if found else None, *args, **kwargs)


def split_segments(count: int, segments: int) -> list[range]:
    """Contiguous, near-equal ranges of ``count`` indices (earlier segments take the remainder)."""
    size, extra = divmod(count, segments)
    ranges, start = [], 0
    for s in range(segments):
        stop = start + size + (1 if s < extra else 0)
        ranges.append(range(start, stop))
        start = stop
    return ranges


class SegmentedForward:
    """An ``nn.Sequential``'s ``forward`` while its blocks are checkpointed in segments: its children in order, each
    segment of consecutive blocks under one checkpoint (it keeps the segment's input only), the others plain.

    ``groups``: the runs of consecutive children that are blocks, by name; ``segments``: how many segments each run
    is cut into, or None (selective) for the size the probe's bytes give; ``blocks``: L, the blocks of the whole run
    (in this and other containers), for that size."""

    def __init__(self, container: nn.Sequential, groups: list[list[str]], segments: list[int] | None, blocks: int):
        self.module = container
        self.groups, self.blocks = groups, blocks
        self.selective = segments is None
        self.planned = self._plan([split_segments(len(g), s) for g, s in zip(groups, segments)] if segments else
                                  [split_segments(len(g), len(g)) for g in groups])
        self.probes: dict[bool, tuple[Plan, dict[str, Probe]]] = {}  # selective: by training mode

    def _plan(self, cuts: list[list[range]], recomputed: list[list[bool]] | None = None) -> Plan:
        """The children in order: each group's segments (``recomputed`` says which are, default all), the rest
        plain, one by one."""
        in_group = {name: i for i, group in enumerate(self.groups) for name in group}
        plan: Plan = []
        for name in self.module._modules:
            index = in_group.get(name)
            if index is None:
                plan.append(([name], False))
            elif name == self.groups[index][0]:
                flags = recomputed[index] if recomputed else [True] * len(cuts[index])
                plan += [([self.groups[index][i] for i in r], flag) for r, flag in zip(cuts[index], flags)]
        return plan

    @property
    def plan(self) -> Plan:
        """The segments of the training forward: decided by the probe (selective) once it has run."""
        found = self.probes.get(True) or self.probes.get(False)
        return found[0] if found else self.planned

    def _children(self, names: list[str]) -> list[nn.Module]:
        return [self.module.get_submodule(name) for name in names]

    def __call__(self, input: Any) -> Any:
        if torch.compiler.is_compiling():
            return self._traced(input)
        return self._eager(input)

    def _traced(self, input: Any) -> Any:
        """Under torch.compile: the planned segments, each a plain checkpoint (see the module's docstring)."""
        for names, recomputed in self.plan:
            children = self._children(names)
            if recomputed and torch.is_grad_enabled():
                input = checkpoint(_run_in_order, children, input, use_reentrant=False)
            else:
                input = _run_in_order(children, input)
        return input

    @torch.compiler.disable  # never traced: _traced is
    def _eager(self, input: Any) -> Any:
        if not torch.is_grad_enabled():
            return nn.Sequential.forward(self.module, input)
        plan, probes = self.planned, cast(dict[str, Probe], {})
        if self.selective:
            if self.module.training not in self.probes:
                self.probes[self.module.training] = self._probe(input)
            plan, probes = self.probes[self.module.training]
        for names, recomputed in plan:
            children = self._children(names)
            run = functools.partial(_run_in_order, children)
            if not recomputed:
                input = run(input)
                continue
            keep = [k for name in names for k in probes[name].keep] if probes else None
            input = _checkpointed(run, children, keep, input)
        return input

    def _probe(self, input: Any) -> tuple[Plan, dict[str, Probe]]:
        """Selective: each child probed in order (one more plain forward, once), then each group cut into segments
        of g blocks, g = √(L · input / recomputed) (Chen et al.'s optimum for these bytes); a segment that would hold
        as much as its plain forward saves runs plain."""
        probes: dict[str, Probe] = {}
        for name, module in self.module.named_children():
            probes[name], input = probe(module, (input,), {}, [module])
        cuts, recomputed = [], []
        for group in self.groups:
            found = [probes[name] for name in group]
            inputs, redone = sum(p.input_bytes for p in found), sum(p.recomputed_bytes for p in found)
            size = min(len(group), max(1, round(math.sqrt(self.blocks * inputs / redone)))) if redone else len(group)
            cut = split_segments(len(group), math.ceil(len(group) / size))
            cuts.append(cut)
            recomputed.append([_worth_it([found[i] for i in r]) for r in cut])
        return self._plan(cuts, recomputed), probes


def _worth_it(segment: list[Probe]) -> bool:
    """A segment checkpointed holds its first block's input and the outputs kept: less than the plain forward saves?"""
    return segment[0].input_bytes + sum(p.kept_bytes for p in segment) < sum(p.saved_bytes for p in segment)


def _run_in_order(children: list[nn.Module], input: Any) -> Any:
    for child in children:
        input = child(input)
    return input


def wrappers(model: nn.Module) -> Iterator[tuple[str, nn.Module, CheckpointedForward | SegmentedForward]]:
    """(name, module, its checkpointing wrapper) for every module of the model that has one."""
    for name, module in model.named_modules():
        wrapper = module.__dict__.get("forward")
        if isinstance(wrapper, (CheckpointedForward, SegmentedForward)):
            yield name, module, wrapper
