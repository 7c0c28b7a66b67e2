"""What a technique is: a small object hooking the loop's events, and its declaration (config keys, order,
parallel modes), from which RunConfig, the CLI flags, ``leantrain list`` and the README table are derived.

Before training, a technique that declares ``changes_model`` gets ``prepare(model, device)``: it changes the
module in place (wrap blocks for checkpointing, keep layers a CPU cannot run in low precision in fp32), so
that the run's preflight (the dry step and the memory estimate) sees the model as it will train. The run
calls it once, after the parallel layout and before the optimizer is built (see ``leantrain/train/run.py``).

Each event's contract (the loop decides when they fire; see ``leantrain/train/loop.py``):

    ON_FIT_START(state)                     the model, optimizer and (on resume) state are restored
    BEFORE_STEP(state)                      before a step's micro-batches are drawn (set state.accum_steps here)
    AFTER_MICRO_BACKWARD(state, i)          after micro-batch i's backward; gradients hold the running sum
    BEFORE_OPTIMIZER_STEP(state)            gradients are final and unscaled: clip or inspect them here
    AFTER_OPTIMIZER_STEP(state)             the step is done (it may have been skipped by the loss scaler)
    ON_EPOCH_END(state, record)             after validation; may add keys to the epoch record, replace
                                            state.model/state.optimizer (e.g. to resize), or set state.stop_training
    ON_FIT_END(state)

A technique that holds state across steps returns it from ``state_dict`` so a checkpoint can restore it;
``load_state_dict`` runs before the model's weights are loaded, so a technique may rebuild the model first.
"""
from __future__ import annotations

import enum
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from leantrain.options import Option
from leantrain.techniques.amp import Precision


class Event(enum.Enum):
    """The hooks a technique can implement; the value is the method's name."""

    ON_FIT_START = "on_fit_start"
    BEFORE_STEP = "before_step"
    AFTER_MICRO_BACKWARD = "after_micro_backward"
    BEFORE_OPTIMIZER_STEP = "before_optimizer_step"
    AFTER_OPTIMIZER_STEP = "after_optimizer_step"
    ON_EPOCH_END = "on_epoch_end"
    ON_FIT_END = "on_fit_end"


class AutocastFactory(Protocol):
    """Makes the context the forward pass runs in (autocast, or nothing). A callback protocol, not a Callable,
    so that mypy lets a dataclass field of this type be assigned."""

    def __call__(self) -> AbstractContextManager[Any]: ...


class GradientSync(Protocol):
    def __call__(self) -> None: ...


class Forward(Protocol):
    """What the loop calls for the forward pass: the model, or a technique's compiled or wrapped stand-in."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


class Collectives(Protocol):
    """What a technique may use of the ranks (``leantrain.parallel.Dist`` is one): one process says 0 of 1."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor: ...


class StepState(Protocol):
    """What a technique may read and change while training; the loop's TrainState is one.

    Declared here, not imported from ``leantrain.train``, so techniques depend on nothing above them.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    base_lr: float
    forward: Forward
    eval_forward: Forward | None
    no_sync: AutocastFactory
    sync_gradients: GradientSync

    @property
    def dist(self) -> Collectives: ...

    precision: Precision  # autocast, dtypes and the loss scaler (amp.py)
    accum_steps: int
    step: int
    stop_training: bool

    @property
    def total_steps(self) -> int: ...

    def set_lr(self, lr: float) -> None: ...


class Technique:
    # The declaration. ``name`` keys checkpoints and ``runs_after``; ``options`` become RunConfig keys and
    # CLI flags (the first is the switch); ``from_config`` builds the technique when they switch it on.
    name: ClassVar[str] = "technique"
    summary: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    # Techniques that must see an event before this one does (when both are on), e.g. ("accumulation",).
    runs_after: ClassVar[tuple[str, ...]] = ()
    # The parallel modes it composes with. A registered technique must list them itself (``register`` checks), so
    # a mode added later is refused until the technique names it; a hook that only observes (a callback, a
    # user's probe passed to ``fit``) composes with every mode (None). The modes: leantrain/parallel/modes/.
    parallel_modes: ClassVar[frozenset[str] | None] = None
    # Capabilities the run reads instead of technique names. ``changes_model``: ``prepare`` changes the module.
    # ``sets_lr``: it sets the optimizer's learning rate while training (so a user's LR scheduler is refused).
    changes_model: ClassVar[bool] = False
    sets_lr: bool = False  # an instance may say otherwise (accumulation without lr scaling sets none)

    @classmethod
    def from_config(cls, config: Any) -> Technique | None:
        """The technique a validated RunConfig switches on, or None when it is off."""
        return None

    @classmethod
    def is_switched_on(cls, config: Any) -> bool:
        """Whether the config turns it on, even where its setting is ``auto`` and chosen by a measurement later."""
        return cls.from_config(config) is not None

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Checks across keys (each key's own checks are in its Option); raise ValueError naming the problem."""

    @classmethod
    def check_model(cls, config: Any, model: nn.Module) -> None:
        """Checks of a switched-on technique's keys against the built model, which only the model can judge (which
        modules checkpointing wraps): made before anything is measured or written; raise UsageError naming it."""

    def prepare(self, model: nn.Module, device: torch.device) -> None:
        """Change ``model`` in place before the preflight (only techniques that declare ``changes_model``)."""

    def on_fit_start(self, state: StepState) -> None: ...

    def before_step(self, state: StepState) -> None: ...

    def after_micro_backward(self, state: StepState, micro_index: int) -> None: ...

    def before_optimizer_step(self, state: StepState) -> None: ...

    def after_optimizer_step(self, state: StepState) -> None: ...

    def on_epoch_end(self, state: StepState, record: dict[str, Any]) -> None: ...

    def on_fit_end(self, state: StepState) -> None: ...

    def describe(self) -> str:
        """A short label for results, e.g. 'bf16'."""
        return self.name

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, saved: dict[str, Any], state: StepState) -> None: ...


def in_hook_order(techniques: list[Technique]) -> list[Technique]:
    """Each technique after those it ``runs_after``; otherwise in the order given (a stable topological sort)."""
    pending = list(techniques)
    ordered: list[Technique] = []
    while pending:
        waiting_on = {t.name for t in pending}
        ready = next((t for t in pending if not waiting_on.intersection(t.runs_after) - {t.name}), None)
        if ready is None:
            raise ValueError(f"techniques {', '.join(t.name for t in pending)} each run after another: a cycle")
        ordered.append(ready)
        pending.remove(ready)
    return ordered


def fire(techniques: list[Technique], event: Event, state: StepState, *args: Any) -> None:
    for hook in implementations(techniques, event):
        hook(state, *args)


def implementations(techniques: list[Technique], event: Event) -> list[Callable[..., None]]:
    """The hooks ``event`` calls, in the techniques' order: the bound methods of the techniques whose class
    implements it, and hooks set on an instance; never ``Technique``'s own no-op."""
    name = event.value
    return [getattr(t, name) for t in techniques
            if name in getattr(t, "__dict__", ()) or getattr(type(t), name, None) is not getattr(Technique, name)]


@dataclass(frozen=True)
class StepHooks:
    """The per-step events' hooks (``implementations``), looked up once an epoch rather than at every ``fire``: a
    step's Python is the loop's largest own cost on a small model (~1 ms a step on a CPU), and an event no
    technique implements then costs it nothing."""

    before_step: list[Callable[[StepState], None]]
    after_micro_backward: list[Callable[[StepState, int], None]]
    before_optimizer_step: list[Callable[[StepState], None]]
    after_optimizer_step: list[Callable[[StepState], None]]

    @classmethod
    def of(cls, techniques: list[Technique]) -> StepHooks:
        return cls(*(implementations(techniques, event) for event in (
            Event.BEFORE_STEP, Event.AFTER_MICRO_BACKWARD, Event.BEFORE_OPTIMIZER_STEP, Event.AFTER_OPTIMIZER_STEP)))
