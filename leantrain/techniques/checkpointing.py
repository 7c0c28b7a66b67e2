"""Activation checkpointing: chosen modules keep only their inputs in the forward pass and recompute the rest in
backward.

Works on any model, whatever its forward does: each chosen module is wrapped in place, as
``torch.distributed.algorithms._checkpoint.checkpoint_wrapper.apply_activation_checkpointing`` wraps, except
that the wrapper is the module's own ``forward`` (an instance attribute), not a module put in its place. The
module keeps its class, its place in its parent and its hooks, and every name stays plain: ``state_dict`` *and*
``named_parameters``, which PyTorch's ``CheckpointWrapper`` prefixes with ``_checkpoint_wrapped_module.`` (its
state-dict hooks strip the prefix from ``state_dict`` alone). Removing the attribute undoes it.

Which modules: by default the model's blocks, its longest run of same-class modules with layers inside held in
``nn.ModuleList``s or ``nn.Sequential``s, the lists of one class taken together (timm's ``blocks``, torchvision
ResNet's ``layer1..layer4`` children, Hugging Face's ``encoder.layer``), in model order; ``checkpointing_modules``
names the classes instead. Of those L modules the setting wraps ``sqrt``: ≈√L, evenly spaced (every k-th block,
as torchtitan's layer-selective checkpointing); ``N``: N of them; ``full``: all; ``selective``: all, under
``torch.utils.checkpoint``'s selective policy, which keeps the outputs of matrix products, convolutions and
attention and recomputes the cheap ops between them.

A wrapped module saves its input instead of what its layers save: memory falls by what the layers inside save
beyond that input, so a block whose only saved tensor is its input (a Linear followed by a ReLU) saves nothing.
"""
from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, cast

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from leantrain._torch_private import BatchNormBase
from leantrain.errors import UsageError
from leantrain.options import Option
from leantrain.techniques.base import StepState, Technique
from leantrain.techniques.registry import register

SETTINGS = ("off", "sqrt", "full", "selective")
FLAG = "--checkpointing-modules"
CLASS_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
# Modules that hold other modules but have no forward of their own: never a block.
CONTAINERS = (nn.ModuleList, nn.ModuleDict)


# --- which modules -----------------------------------------------------------------------------------------------

def class_name(module: nn.Module) -> str:
    """The module's class name, as the user wrote it: FSDP2's ``fully_shard`` swaps in a class ``FSDP<Name>``."""
    cls = next((c for c in type(module).__mro__ if not c.__module__.startswith("torch.distributed.fsdp")),
               type(module))
    return cls.__name__


def _matches(module: nn.Module, names: Sequence[str]) -> bool:
    cls = type(module)
    return class_name(module) in names or f"{cls.__module__}.{cls.__qualname__}" in names


def _outermost(named: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """Drop the modules nested inside another of the list: the outer one's recomputation covers them."""
    kept: list[tuple[str, nn.Module]] = []
    for name, module in named:  # in model order: a parent comes before what it holds
        if not any(name.startswith(outer + ".") or not outer for outer, _ in kept):
            kept.append((name, module))
    return kept


def _is_block(module: nn.Module, parent: nn.Module) -> bool:
    """A module with layers inside, held in a list of blocks (an nn.ModuleList or nn.Sequential)."""
    in_list = isinstance(parent, (nn.ModuleList, nn.Sequential))
    return in_list and not isinstance(module, CONTAINERS) and any(True for _ in module.children())


def block_runs(model: nn.Module) -> dict[type, list[tuple[str, nn.Module]]]:
    """The model's blocks by class, in model order: the runs of one class in several lists taken together."""
    runs: dict[type, list[tuple[str, nn.Module]]] = {}
    for parent_name, parent in model.named_modules():
        for name, module in parent.named_children():
            if _is_block(module, parent):
                runs.setdefault(type(module), []).append((f"{parent_name}.{name}" if parent_name else name, module))
    order = {id(m): i for i, m in enumerate(model.modules())}  # preorder: a module's place in the model
    return {cls: _outermost(sorted(found, key=lambda nm: order[id(nm[1])])) for cls, found in runs.items()}


def block_like_classes(model: nn.Module) -> str:
    """The classes of the model's modules that hold layers, most frequent first: 'Block (12), Mlp (12)'."""
    counts: dict[str, int] = {}
    for module in list(model.modules())[1:]:
        if not isinstance(module, CONTAINERS) and any(True for _ in module.children()):
            counts[class_name(module)] = counts.get(class_name(module), 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:10]
    return ", ".join(f"{name} ({n})" for name, n in ranked) or "none"


def choose_blocks(model: nn.Module, classes: Sequence[str] | None = None) -> list[tuple[str, nn.Module]]:
    """The modules checkpointing picks from, in model order: those of ``classes`` (each must match), or the
    longest run of same-class blocks. A model with neither is a UsageError naming what to give."""
    model_class = type(model).__name__
    if classes:
        named = [(name, m) for name, m in model.named_modules() if _matches(m, classes)]
        missing = [c for c in classes if not any(_matches(m, [c]) for _, m in named)]
        if missing:
            raise UsageError(f"{FLAG} {missing[0]!r} matches no module of {model_class}; its classes that hold "
                             f"layers: {block_like_classes(model)}")
        return _outermost(named)
    runs = sorted(block_runs(model).values(), key=len, reverse=True)  # stable: the first run found wins a tie
    if not runs:
        raise UsageError(f"activation checkpointing found no repeated blocks in {model_class} (no module with layers "
                         f"inside held in an nn.ModuleList or nn.Sequential); name the classes to wrap with {FLAG} "
                         "Class[,Class...] (checkpointing_modules= in lt.fit and experiment files)")
    return runs[0]


def wrap_count(setting: str | int, blocks: int) -> int:
    """How many of ``blocks`` a setting wraps: sqrt -> round(√L), N -> N (at most L), full/selective -> L."""
    if setting == "off" or blocks == 0:
        return 0
    if setting == "sqrt":
        return max(1, round(math.sqrt(blocks)))
    if setting in ("full", "selective"):
        return blocks
    return max(1, min(int(setting), blocks))


def spread(count: int, total: int) -> list[int]:
    """``count`` of ``total`` indices evenly spaced from the first (every k-th when ``count`` divides ``total``)."""
    return [i * total // count for i in range(count)]


# --- the wrapper ---------------------------------------------------------------------------------------------------

class _RunningStatsFrozen:
    """Around a recomputation: batch norm runs the same code (so it saves the same tensors) with momentum 0, which
    leaves its running statistics exactly as they were; the step counter is put back afterwards. Entered once per
    recomputation (a second backward through a kept graph recomputes again); its tensor ops run outside the selective
    policy's dispatch mode, which refuses ops the forward did not run."""

    def __init__(self, blocks: list[nn.Module]):
        self.norms = [m for b in blocks for m in b.modules() if isinstance(m, BatchNormBase) and m.track_running_stats]
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


def _saved_ops() -> frozenset[Any]:
    """The ops whose outputs selective checkpointing keeps: matrix products, convolutions, fused attention."""
    names = ("mm", "addmm", "bmm", "baddbmm", "convolution", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_fused_attention_overrideable")
    ops = []
    for name in names:
        with contextlib.suppress(AttributeError, RuntimeError):  # an op this build of torch lacks
            ops.append(getattr(torch.ops.aten, name).default)
    return frozenset(ops)


SAVED_OPS = _saved_ops()


def _keep_products(kept: list[torch.Tensor], ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """Selective checkpointing's policy: keep what SAVED_OPS output, recompute the rest. What the forward keeps is
    also listed in ``kept``, for the saved-tensor hooks, where torch hands the policy the op's output (2.13 does)."""
    if op not in SAVED_OPS:
        return CheckpointPolicy.PREFER_RECOMPUTE
    if not ctx.is_recompute:
        kept.extend(t.detach() for t in _tensors(getattr(ctx, "op_output", None)))
    return CheckpointPolicy.MUST_SAVE


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


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


class _CheckpointedForward:
    """A module's ``forward`` while it is checkpointed: its own forward under ``torch.utils.checkpoint``
    (non-reentrant: autocast, keyword arguments and inputs that need no grad all work), with grad enabled only;
    without grad nothing is saved, so nothing is recomputed."""

    def __init__(self, module: nn.Module, selective: bool):
        self.module = module
        self.selective = selective
        self.previous: Callable[..., Any] | None = module.__dict__.get("forward")  # an instance's own, kept

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        forward = self.previous or functools.partial(type(self.module).forward, self.module)
        return forward(*args, **kwargs)

    # torch.compile runs this eagerly (a graph break, as the segments before it did): compiled through, the backward
    # replays recomputation as higher-order ops, which the activation meter's dispatch mode cannot take.
    @torch.compiler.disable
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return self._forward(*args, **kwargs)
        kept: list[torch.Tensor] = []
        output = checkpoint(self._forward, *args, use_reentrant=False, context_fn=self._contexts(kept), **kwargs)
        if kept:
            output = _show_cache(output, kept)
            kept.clear()  # held by selective checkpointing's own cache from here, and by _CacheVisible
        return output

    def _contexts(self, kept: list[torch.Tensor]) -> Callable[[], tuple[Any, Any]]:
        """checkpoint's context_fn: batch norm's running statistics frozen around the recomputation, which runs under
        the selective policy where it applies."""

        def contexts() -> tuple[Any, Any]:
            frozen = _RunningStatsFrozen([self.module])
            if not self.selective:
                return contextlib.nullcontext(), frozen
            forward, recompute = create_selective_checkpoint_contexts(functools.partial(_keep_products, kept))
            return forward, _InOrder(frozen, recompute)

        return contexts


def _wrapped(module: nn.Module) -> bool:
    return isinstance(module.__dict__.get("forward"), _CheckpointedForward)


def checkpointed(model: nn.Module) -> list[str]:
    """The names of the model's modules that are checkpointed now ('' for the model itself)."""
    return [name for name, module in model.named_modules() if _wrapped(module)]


def uncheckpoint_modules(model: nn.Module) -> None:
    """Undo ``checkpoint_modules``: every wrapped module gets back the forward it had."""
    for module in model.modules():
        wrapper = module.__dict__.get("forward")
        if isinstance(wrapper, _CheckpointedForward):
            del module.forward
            if wrapper.previous is not None:
                module.forward = wrapper.previous


def checkpoint_modules(model: nn.Module, setting: str | int = "sqrt", classes: Sequence[str] | None = None) -> list[str]:
    """Checkpoint the modules ``setting`` picks (see the module's docstring), in place; returns their names."""
    uncheckpoint_modules(model)  # a second call replaces the first's choice
    if setting == "off":
        return []
    blocks = choose_blocks(model, classes)
    picked = [blocks[i] for i in spread(wrap_count(setting, len(blocks)), len(blocks))]
    for _, module in picked:
        module.forward = _CheckpointedForward(module, selective=setting == "selective")
    return [name for name, _ in picked]


# --- the technique ------------------------------------------------------------------------------------------------

def _setting(value: str | int) -> str | int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)  # from the command line, a count arrives as text
    if not (value in SETTINGS or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)):
        raise ValueError(f"checkpointing {value!r} is not off, sqrt, full, selective or a positive number of modules")
    return value


def class_names(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """'Block, Layer' (or a list of names) -> ('Block', 'Layer'); None stays None."""
    if value is None:
        return None
    names = tuple(n.strip() for n in (value.split(",") if isinstance(value, str) else value))
    bad = next((n for n in names if not CLASS_NAME.fullmatch(n)), None)
    if bad is not None or not names:
        raise ValueError(f"checkpointing_modules {value!r}: give class names, comma-separated (e.g. Block,Layer)")
    return names


def _modules_option(value: str | None) -> str | None:
    names = class_names(value)
    return None if names is None else ",".join(names)


@register
class ActivationCheckpointing(Technique):
    name = "checkpointing"
    summary = "activation checkpointing of the model's blocks (√L, N or all of them): less memory, one more forward"
    options = (
        Option("checkpointing", str | int, "off",
               "activation checkpointing of the model's blocks: off, sqrt (√L of the L blocks, evenly spaced), N (N "
               "of them), full (all), selective (all; matmul, conv and attention outputs kept)", check=_setting),
        Option("checkpointing_modules", str | None, None,
               "activation checkpointing: the classes of the modules to wrap, comma-separated (default: the model's "
               "longest run of same-class blocks); ignored while checkpointing is off", check=_modules_option),
    )
    runs_after = ("complexity",)  # wraps the blocks complexity matching may rebuild
    parallel_modes = frozenset({"none", "ddp", "mpi", "fsdp", "pipeline", "hybrid", "ensemble"})
    changes_model = True

    @classmethod
    def from_config(cls, config: Any) -> ActivationCheckpointing | None:
        if config.checkpointing == "off":
            return None
        return cls(config.checkpointing, config.checkpointing_modules)

    @classmethod
    def check_model(cls, config: Any, model: nn.Module) -> None:
        if config.checkpointing != "off":
            choose_blocks(model, class_names(config.checkpointing_modules))

    def __init__(self, setting: str | int = "sqrt", modules: str | Sequence[str] | None = None):
        if setting == "off":
            raise ValueError("ActivationCheckpointing('off') would do nothing: leave it out")
        self.setting = _setting(setting)
        self.classes = class_names(modules)
        self.wrapped: list[str] = []  # the names of the modules wrapped (kept after the run, for the user to read)
        self._models: list[nn.Module] = []  # the models wrapped, unwrapped at the end

    def describe(self) -> str:
        return f"ckpt-{self.setting}"

    def prepare(self, model: nn.Module, device: torch.device) -> None:
        self._wrap(model)

    def _wrap(self, model: nn.Module) -> None:
        self.wrapped = checkpoint_modules(model, self.setting, self.classes)
        if not any(m is model for m in self._models):
            self._models.append(model)

    def on_fit_start(self, state: StepState) -> None:
        self._wrap_if_rebuilt(state.model)  # a loop started without a Run, or a model rebuilt since (complexity)

    def on_epoch_end(self, state: StepState, record: dict[str, Any]) -> None:
        self._wrap_if_rebuilt(state.model)  # complexity matching may have replaced the blocks
        record["checkpointing"] = self.setting
        record["checkpointed_modules"] = list(self.wrapped)

    def _wrap_if_rebuilt(self, model: nn.Module) -> None:
        if not checkpointed(model):
            self._wrap(model)

    def on_fit_end(self, state: StepState) -> None:
        for model in [*self._models, state.model]:
            uncheckpoint_modules(model)  # hand the user back the module they gave
        self._models = []
