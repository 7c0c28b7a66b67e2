"""optimizer = auto-adam judges each Adam kernel once it is warm (issue 25, item 6 f).

The issue's run recorded ``adam`` (0.441 ms) over ``fused-adam`` (0.118 ms): fused's second step, still a warm-up
step, was held against adam's warm time and fused was dropped as "3.5x slower in warm-up". Here each kernel's steps
take scripted times on a fake clock, so the rule is tested without timing noise."""
import pytest
import torch
from torch import nn

from leantrain.tuning import probe
from leantrain.tuning.choice import choose

CPU = torch.device("cpu")


class Clock:
    def __init__(self):
        self.t = 0.0

    def now(self, device):
        return self.t


class ScriptedAdam:
    """An optimizer whose steps take ``cold`` milliseconds each at first, then ``warm`` milliseconds."""

    def __init__(self, clock, warm, cold=()):
        self.clock, self.warm, self.cold, self.taken = clock, warm, list(cold), 0

    def step(self):
        ms = self.cold[self.taken] if self.taken < len(self.cold) else self.warm
        self.clock.t += ms / 1e3
        self.taken += 1


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(probe, "now", fake.now)
    return fake


def _model():
    return nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))


def _trials(clock, kernels):
    made = {}

    def factory(name):
        def make(params):
            made[name] = ScriptedAdam(clock, *kernels[name])
            return made[name]
        return make

    trials = probe.optimizer_trials(_model(), {name: factory(name) for name in kernels}, CPU)
    return trials, made


def test_a_kernel_slow_only_while_warming_up_is_timed_warm_and_chosen(clock):
    kernels = {
        "adam": (0.441, [1.0]),
        "foreach-adam": (0.441, [1.0]),
        "fused-adam": (0.118, [1.0, 1.55]),  # its second step 3.5x adam's warm step: still warming up
    }
    trials, _ = _trials(clock, kernels)
    assert not trials["fused-adam"].skipped
    assert trials["fused-adam"].median_ms == pytest.approx(0.118)
    assert not trials["adam"].skipped  # 3.7x slower, but the reference: dropped, it would have been kept as the default
    choice, why = choose(trials, "adam")
    assert choice == "fused-adam" and why["adam"] == "slower than fused-adam"


def test_every_kernel_takes_its_warm_up_steps_before_it_is_judged(clock):
    # Each kernel's first steps are slow (state allocated, kernels picked), the fused one's far slower than the
    # loop's first step: none is judged on them.
    kernels = {
        "adam": (0.4, [10.0, 2.0]),
        "foreach-adam": (0.2, [50.0, 5.0]),
        "fused-adam": (0.1, [400.0, 40.0]),
    }
    trials, made = _trials(clock, kernels)
    for name, optimizer in made.items():
        assert optimizer.taken >= probe.WARMUP_STEPS + 2, name  # its warm-up, then warm steps judged and timed
        assert not trials[name].skipped, (name, trials[name].skipped)
        assert trials[name].median_ms == pytest.approx(kernels[name][0]), name  # only warm steps timed
    assert choose(trials, "adam")[0] == "fused-adam"


def test_a_kernel_still_hopeless_once_warm_is_dropped_after_its_warm_up(clock):
    trials, made = _trials(clock, {"adam": (0.1, []), "fused-adam": (5.0, [])})
    assert "slower than adam in warm-up" in trials["fused-adam"].skipped
    assert made["fused-adam"].taken == probe.WARMUP_STEPS + 2  # its warm-up and two warm steps, no rounds


class Scripted(probe._Stepper):
    def __init__(self, clock, ms, loss):
        self.clock, self.ms, self._loss = clock, ms, loss

    def steps(self, n):
        self.clock.t += n * self.ms / 1e3

    def loss(self):
        return self._loss


def test_a_reference_far_slower_than_an_alternative_is_still_timed_so_the_alternative_can_win(clock):
    # An AMX Xeon runs bf16 ~6x faster than fp32: fp32 was dropped as hopeless, and choose() then kept it as the
    # "unusable" reference's safe default.
    steppers = {"fp32": Scripted(clock, 6.0, 1.00), "bf16": Scripted(clock, 1.0, 1.01)}
    trials = probe._race(steppers, CPU, rounds=3)
    assert not trials["fp32"].skipped and trials["fp32"].loss == 1.00
    assert choose(trials, "fp32")[0] == "bf16"
