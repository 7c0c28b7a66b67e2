"""Activation checkpointing: keep only segment inputs in the forward pass, recompute the rest in backward.

A stack of L blocks split into s segments keeps s segment inputs plus, during backward, the
activations of one segment (L/s blocks) at a time: memory ~ s + L/s blocks' worth, least at s = √L
(Chen et al. 2016, "Training deep nets with sublinear memory cost"), for one extra forward pass.

Works on any model that keeps its repeated blocks in ``self.blocks`` (an ``nn.ModuleList`` that forward
runs in order: ``for block in self.blocks: x = block(x)``). ``self.blocks`` is swapped for a ModuleList
holding the same modules under the same names (so checkpoints stay plain) whose iteration, in training
with grad enabled, yields one checkpointed callable per segment instead of the blocks themselves.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from leantrain._torch_private import BatchNormBase, inside_backward
from leantrain.options import Option
from leantrain.techniques.base import StepState, Technique
from leantrain.techniques.registry import register


def segment_count(setting: str | int, num_blocks: int) -> int:
    """Segments for a setting: "sqrt" -> round(√L), an int -> itself (at most L), "off" -> 0."""
    if setting == "off" or num_blocks == 0:
        return 0
    if setting == "sqrt":
        return max(1, round(math.sqrt(num_blocks)))
    return max(1, min(int(setting), num_blocks))


def split_segments(num_blocks: int, segments: int) -> list[range]:
    """Contiguous, near-equal ranges of block indices (earlier segments take the remainder)."""
    size, extra = divmod(num_blocks, segments)
    ranges, start = [], 0
    for s in range(segments):
        stop = start + size + (1 if s < extra else 0)
        ranges.append(range(start, stop))
        start = stop
    return ranges


@contextlib.contextmanager
def _running_stats_frozen(blocks: list[nn.Module]) -> Iterator[None]:
    """Batch norm runs the same code (so recomputation saves the same tensors) with momentum 0, which
    leaves its running statistics exactly as they were; the step counter is put back afterwards."""
    norms = [m for b in blocks for m in b.modules() if isinstance(m, BatchNormBase) and m.track_running_stats]
    saved = [(m.momentum, cast(torch.Tensor, m.num_batches_tracked).clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            cast(torch.Tensor, m.num_batches_tracked).copy_(tracked)


class _Segment:
    """A callable running blocks[i..j] under torch.utils.checkpoint (non-reentrant: works with autocast,
    keyword arguments and inputs that do not require grad)."""

    def __init__(self, blocks: list[nn.Module]):
        self.blocks = blocks

    def _run(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # Inside backward this forward is the recomputation: batch norm must not update its running
        # statistics a second time (the checkpointed model would otherwise evaluate differently).
        recomputing = inside_backward()
        with _running_stats_frozen(self.blocks) if recomputing else contextlib.nullcontext():
            for block in self.blocks:
                x = block(x, *args, **kwargs)
        return x

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return checkpoint(self._run, x, *args, use_reentrant=False, **kwargs)


class CheckpointedBlocks(nn.ModuleList):
    """The model's blocks, same names and order; iterating yields checkpointed segments while the model that
    owns them runs a training forward. Anywhere else (a layout or a technique reading the layers) they are the
    blocks themselves."""

    def __init__(self, blocks: nn.ModuleList, segments: int):
        super().__init__(blocks)
        self.segments = segments
        self.forwarding = 0  # the owner's forward passes under way (set by _entered_owner / _left_owner)

    def __iter__(self) -> Iterator[Any]:
        modules = list(self._modules.values())
        if not (self.forwarding and self.training and torch.is_grad_enabled()):
            return iter(modules)  # evaluation, or not the forward: nothing is saved, nothing to recompute
        return iter([_Segment(modules[r.start : r.stop]) for r in split_segments(len(modules), self.segments)])


# Forward hooks on the model that owns the blocks: module-level functions that look the blocks up when called,
# so they survive deepcopy and pickling.
def _entered_owner(owner: nn.Module, args: Any) -> None:
    blocks = getattr(owner, "blocks", None)
    if isinstance(blocks, CheckpointedBlocks):
        blocks.forwarding += 1


def _left_owner(owner: nn.Module, args: Any, output: Any) -> None:
    blocks = getattr(owner, "blocks", None)
    if isinstance(blocks, CheckpointedBlocks):
        blocks.forwarding = max(0, blocks.forwarding - 1)


def _hook_owner(model: nn.Module) -> None:
    if _entered_owner not in model._forward_pre_hooks.values():
        model.register_forward_pre_hook(_entered_owner)
        model.register_forward_hook(_left_owner, always_call=True)


def _unhook_owner(model: nn.Module) -> None:
    for hooks, hook in ((model._forward_pre_hooks, _entered_owner), (model._forward_hooks, _left_owner)):
        for key in [k for k, v in hooks.items() if v is hook]:
            del hooks[key]


def checkpoint_blocks(model: nn.Module, setting: str | int = "sqrt") -> int:
    """Checkpoint ``model.blocks`` in segments, in place; returns the segment count (0: nothing to do)."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(
            f"activation checkpointing needs the model's repeated blocks in `self.blocks` (an nn.ModuleList); "
            f"{type(model).__name__} has none"
        )
    if isinstance(blocks, CheckpointedBlocks):
        blocks = nn.ModuleList(blocks._modules.values())
    segments = segment_count(setting, len(blocks))
    model.blocks = CheckpointedBlocks(blocks, segments) if segments else blocks
    if segments:
        _hook_owner(model)
    return segments


def uncheckpoint_blocks(model: nn.Module) -> None:
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, CheckpointedBlocks):
        model.blocks = nn.ModuleList(blocks._modules.values())
    _unhook_owner(model)


def _setting(value: str | int) -> str | int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)  # from the command line, a count arrives as text
    if not (value in ("off", "sqrt") or (isinstance(value, int) and value >= 1)):
        raise ValueError(f"checkpointing {value!r} is not off, sqrt or a positive segment count")
    return value


@register
class ActivationCheckpointing(Technique):
    name = "checkpointing"
    summary = "activation checkpointing of the model's blocks in √L (or N) segments: less memory, one more forward"
    options = (
        Option("checkpointing", str | int, "off",
               "activation checkpointing of the model's blocks: off, sqrt (√L segments), or a segment count", check=_setting),
    )
    runs_after = ("complexity",)  # wraps the blocks complexity matching may rebuild
    parallel_modes = frozenset({"none", "ddp", "mpi", "fsdp", "pipeline", "hybrid", "ensemble"})
    changes_model = True

    @classmethod
    def from_config(cls, config: Any) -> ActivationCheckpointing | None:
        return cls(config.checkpointing) if config.checkpointing != "off" else None

    def __init__(self, segments: str | int = "sqrt"):
        if not (segments in ("sqrt",) or (isinstance(segments, int) and segments >= 1)):
            raise ValueError(f"checkpointing segments must be 'sqrt' or a positive int, got {segments!r}")
        self.setting = segments
        self.segments = 0

    def describe(self) -> str:
        return f"ckpt-{self.setting}"

    def prepare(self, model: nn.Module, device: torch.device) -> None:
        self.segments = checkpoint_blocks(model, self.setting)

    def on_fit_start(self, state: StepState) -> None:
        self._wrap_if_rebuilt(state.model)  # a loop started without a Run, or a model rebuilt since (complexity)

    def on_epoch_end(self, state: StepState, record: dict[str, Any]) -> None:
        self._wrap_if_rebuilt(state.model)  # complexity matching may have replaced the blocks
        record["checkpoint_segments"] = self.segments

    def _wrap_if_rebuilt(self, model: nn.Module) -> None:
        if not isinstance(getattr(model, "blocks", None), CheckpointedBlocks):
            self.segments = checkpoint_blocks(model, self.setting)

    def on_fit_end(self, state: StepState) -> None:
        uncheckpoint_blocks(state.model)  # hand the user back the module they gave
