"""The per-step events reach the techniques that implement them, in the loop's order, with their arguments; a
technique's inherited no-ops are not called at all (the loop looks the implementations up once an epoch)."""
import torch

import leantrain as lt
from leantrain.techniques import Technique
from leantrain.techniques.base import StepHooks


class Trace(Technique):
    """Two micro-batches a step (set before the step, as the contract allows), every step event written down."""

    name = "trace"

    def __init__(self):
        self.events = []

    def before_step(self, state):
        state.accum_steps = 2
        self.events.append(("before_step", state.step))

    def after_micro_backward(self, state, micro_index):
        self.events.append(("after_micro_backward", state.step, micro_index))

    def before_optimizer_step(self, state):
        self.events.append(("before_optimizer_step", state.step))

    def after_optimizer_step(self, state):
        self.events.append(("after_optimizer_step", state.step))


class EpochOnly(Technique):
    name = "epoch-only"

    def __init__(self):
        self.epochs = 0

    def on_epoch_end(self, state, record):
        self.epochs += 1


class StepCounter(EpochOnly):
    """Inherits on_epoch_end from a technique, implements one step event itself."""

    name = "step-counter"

    def after_optimizer_step(self, state):
        self.steps = getattr(self, "steps", 0) + 1


def test_each_step_event_calls_only_the_techniques_that_implement_it():
    trace, epoch_only, counter = Trace(), EpochOnly(), StepCounter()
    hooks = StepHooks.of([trace, epoch_only, counter])
    assert hooks.before_step == [trace.before_step]
    assert hooks.after_micro_backward == [trace.after_micro_backward]
    assert hooks.before_optimizer_step == [trace.before_optimizer_step]
    assert hooks.after_optimizer_step == [trace.after_optimizer_step, counter.after_optimizer_step]


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    return lt.data.from_tensors(x, (x[:, 0] > 0).long(), val_fraction=0.25)  # 48 to train


def test_the_loop_fires_the_step_events_in_order_with_their_arguments():
    trace, epoch_only, counter = Trace(), EpochOnly(), StepCounter()
    # 3 steps of 2 micro-batches of 8 an epoch
    lt.fit(torch.nn.Linear(4, 2), _data(), epochs=2, batch_size=8, techniques=[trace, epoch_only, counter])
    steps = [[("before_step", s), ("after_micro_backward", s, 0), ("after_micro_backward", s, 1),
              ("before_optimizer_step", s), ("after_optimizer_step", s + 1)] for s in range(6)]  # the step counted
    # An epoch asks before each step and once more, finding no batch left.
    expected = [*steps[0], *steps[1], *steps[2], ("before_step", 3), *steps[3], *steps[4], *steps[5],
                ("before_step", 6)]
    assert trace.events == expected
    assert epoch_only.epochs == 2 and counter.epochs == 2 and counter.steps == 6


def test_a_hook_set_on_an_instance_is_called_too():
    steps, epochs = [], []
    callback = lt.Callback()
    callback.after_optimizer_step = lambda state: steps.append(state.step)
    callback.on_epoch_end = lambda state, record: epochs.append(state.epoch)  # fired through ``fire``
    lt.fit(torch.nn.Linear(4, 2), _data(), epochs=2, batch_size=16, callbacks=[callback])
    assert steps == [1, 2, 3, 4, 5, 6] and epochs == [0, 1]
