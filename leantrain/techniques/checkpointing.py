"""Activation checkpointing: chosen modules keep only their inputs in the forward pass and recompute the rest in
backward.

Works on any model, whatever its forward does, as
``torch.distributed.algorithms._checkpoint.checkpoint_wrapper.apply_activation_checkpointing`` wraps, except that
the wrapper is a module's own ``forward`` (an instance attribute, techniques/recompute.py), not a module put in its
place: the module keeps its class, its place in its parent and its hooks, and every name stays plain:
``state_dict`` *and* ``named_parameters``, which PyTorch's ``CheckpointWrapper`` prefixes with
``_checkpoint_wrapped_module.`` (its state-dict hooks strip the prefix from ``state_dict`` alone). Removing the
attribute undoes it.

Which modules: by default the model's blocks, its longest run of same-class modules with layers inside held in
``nn.ModuleList``s or ``nn.Sequential``s, the lists of one class taken together (timm's ``blocks``, torchvision
ResNet's ``layer1..layer4`` children, Hugging Face's ``encoder.layer``), in model order; ``checkpointing_modules``
names the classes instead. How, of those L blocks:

- Held in ``nn.Sequential``s (the zoo's ``self.blocks``, timm's, torchvision's), whose forward calls its children in
  order: the container's forward is replaced by one that runs its blocks in segments of consecutive blocks, one
  checkpoint each (Chen et al. 2016): ``sqrt``: round(√L) segments; ``N``: N; ``full``: one per block. A segment
  keeps its input only, so √L segments hold ~2√L blocks' inputs however little each block saves.
- Elsewhere (a ModuleList, whose order only the parent's forward knows): each picked module is checkpointed alone,
  ``sqrt``: round(√L) of them, evenly spaced (every k-th, as torchtitan's layer-selective checkpointing); ``N``: N
  of them; ``full``: all. A module keeps its input, so one whose layers save nothing more (Linear + ReLU) saves
  nothing.
- ``selective``: all of them under torch.utils.checkpoint's selective policy: of the matrix products, convolutions
  and attention, the outputs the plain forward saves too are kept, except every second product (torchtitan's
  rule), the rest recomputed; measured once at the first training forward, so that it never holds more than no
  checkpointing (techniques/recompute.py says how).
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from leantrain.errors import UsageError
from leantrain.options import Option
from leantrain.techniques.base import StepState, Technique
from leantrain.techniques.recompute import CheckpointedForward, SegmentedForward, wrappers
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


# --- wrapping ------------------------------------------------------------------------------------------------------

def _stock_sequential(module: nn.Module) -> bool:
    """An nn.Sequential running nn.Sequential's own forward: its children in order, each output the next one's input."""
    return (isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward
            and "forward" not in vars(module))


def sequential_groups(model: nn.Module, blocks: list[tuple[str, nn.Module]]) -> list[tuple[str, list[list[str]]]] | None:
    """Where every block is a child of a stock nn.Sequential: per container (its name), in model order, the runs of
    consecutive children that are blocks (their names in it). None where a block sits elsewhere (a ModuleList, whose
    order only its parent's forward knows)."""
    chosen: dict[str, set[str]] = {}
    for name, _ in blocks:
        parent, _, child = name.rpartition(".")
        if not name or not _stock_sequential(model.get_submodule(parent)):  # '': the model itself, named by its class
            return None
        chosen.setdefault(parent, set()).add(child)
    found = []
    for parent, children in chosen.items():
        groups: list[list[str]] = []
        previous = False
        for child in model.get_submodule(parent)._modules:
            if child in children and previous:
                groups[-1].append(child)
            elif child in children:
                groups.append([child])
            previous = child in children
        found.append((parent, groups))
    return found


def _segment_counts(setting: str | int, groups: list[list[str]], blocks: int) -> list[int] | None:
    """How many segments each run of consecutive blocks is cut into: the setting's count (sqrt: round(√L), N, full:
    L) shared out over the runs by their lengths, at least one each; None for selective (the probe decides)."""
    if setting == "selective":
        return None
    total = wrap_count(setting, blocks)
    return [max(1, min(len(g), round(total * len(g) / blocks))) for g in groups]


def checkpointed(model: nn.Module) -> list[str]:
    """The names of the model's modules that are recomputed in backward now ('' for the model itself)."""
    return [name for segment in checkpoint_segments(model) for name in segment]


def checkpoint_segments(model: nn.Module) -> list[list[str]]:
    """The model's checkpointed regions, in model order: the names of the modules each checkpoint recomputes."""
    found = []
    for name, _, wrapper in wrappers(model):
        if isinstance(wrapper, CheckpointedForward):
            found += [[name]] if wrapper.active else []
        else:
            found += [[f"{name}.{c}" if name else c for c in children] for children, on in wrapper.plan if on]
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(found, key=lambda segment: order[segment[0]])


def uncheckpoint_modules(model: nn.Module) -> None:
    """Undo ``checkpoint_modules``: every wrapped module gets back the forward it had."""
    for _, module, wrapper in list(wrappers(model)):
        del module.forward
        if isinstance(wrapper, CheckpointedForward) and wrapper.previous is not None:
            module.forward = wrapper.previous


def checkpoint_modules(model: nn.Module, setting: str | int = "sqrt", classes: Sequence[str] | None = None) -> list[str]:
    """Checkpoint what ``setting`` picks (see the module's docstring), in place; returns the names of the modules
    recomputed (selective: before its probe, all it may recompute)."""
    uncheckpoint_modules(model)  # a second call replaces the first's choice
    if setting == "off":
        return []
    blocks = choose_blocks(model, classes)
    containers = sequential_groups(model, blocks)
    if containers is None:  # the order is unknown: each picked module is recomputed alone
        for i in spread(wrap_count(setting, len(blocks)), len(blocks)):
            module = blocks[i][1]
            module.forward = CheckpointedForward(module, selective=setting == "selective")
    else:
        for name, groups in containers:
            container = model.get_submodule(name)  # an nn.Sequential (sequential_groups checked)
            counts = _segment_counts(setting, groups, len(blocks))
            container.forward = SegmentedForward(cast(nn.Sequential, container), groups, counts, len(blocks))
    return checkpointed(model)


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
    summary = "activation checkpointing of the model's blocks (√L segments, N, all, selective): less memory, more compute"
    options = (
        Option("checkpointing", str | int, "off",
               "activation checkpointing of the model's blocks: off, sqrt (√L segments of the L blocks where an "
               "nn.Sequential holds them, else √L blocks evenly spaced), N (N segments or blocks), full (each block), "
               "selective (each block, or measured segments, keeping the matmul, conv and attention outputs the plain "
               "forward saves, every second matmul recomputed)", check=_setting),
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
        self.wrapped: list[str] = []  # the names of the modules recomputed (kept after the run, for the user to read)
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
        self.wrapped = checkpointed(state.model)  # selective's choice, made at the first training forward
        record["checkpointing"] = self.setting
        record["checkpointed_modules"] = list(self.wrapped)
        record["checkpoint_segments"] = checkpoint_segments(state.model)  # what each checkpoint recomputes

    def _wrap_if_rebuilt(self, model: nn.Module) -> None:
        if next(wrappers(model), None) is None:
            self._wrap(model)

    def on_fit_end(self, state: StepState) -> None:
        for model in [*self._models, state.model]:
            uncheckpoint_modules(model)  # hand the user back the module they gave
        self._models = []
