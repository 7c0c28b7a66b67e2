"""The events a technique can hook. The loop fires them in this order and knows nothing else about techniques.

    on_fit_start(state)                     once, after the model, optimizer and (on resume) state are restored
    per optimizer step:
        before_step(state)                  before the step's micro-batches are drawn (set state.accum_steps here)
        after_micro_backward(state, i)      after micro-batch i's backward; gradients hold the running sum
        before_optimizer_step(state)        gradients are final and unscaled: clip or inspect them here
        after_optimizer_step(state)         the step is done (it may have been skipped by the loss scaler)
    on_epoch_end(state, record)             after validation; may add keys to the epoch record, replace
                                            state.model/state.optimizer (e.g. to resize), or set state.stop_training
    on_fit_end(state)

A technique that holds state across steps returns it from ``state_dict`` so a checkpoint can restore it;
``load_state_dict`` runs before the model's weights are loaded, so a technique may rebuild the model first.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leantrain.train.state import TrainState


class Technique:
    name = "technique"
    # Where two techniques write the same thing, the lower order fires first: complexity matching
    # replaces the optimizer before anything reads it; accumulation sets the effective batch's base lr
    # before the schedule shapes it; clipping sees gradients after every other technique.
    order = 50

    def on_fit_start(self, state: TrainState) -> None: ...

    def before_step(self, state: TrainState) -> None: ...

    def after_micro_backward(self, state: TrainState, micro_index: int) -> None: ...

    def before_optimizer_step(self, state: TrainState) -> None: ...

    def after_optimizer_step(self, state: TrainState) -> None: ...

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None: ...

    def on_fit_end(self, state: TrainState) -> None: ...

    def describe(self) -> str:
        """A short label for results, e.g. 'bf16'."""
        return self.name

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, saved: dict[str, Any], state: TrainState) -> None: ...


def in_hook_order(techniques: list[Technique]) -> list[Technique]:
    """Sorted by ``order`` (stable), so the order a user lists them in cannot break their contract."""
    return sorted(techniques, key=lambda t: t.order)


def fire(techniques: list[Technique], event: str, state: TrainState, *args: Any) -> None:
    for technique in techniques:
        getattr(technique, event)(state, *args)
