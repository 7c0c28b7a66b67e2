"""Warmup + cosine: exact lr at the boundary steps, through the loop, and over the data seen under accumulation."""
import math

import pytest
import torch
from torch import nn

import leantrain
from leantrain.data import from_tensors
from leantrain.techniques import AdaptiveAccumulation, Technique, WarmupCosine
from leantrain.techniques.schedule import warmup_cosine_lr


def test_lr_at_boundaries():
    base, total = 0.1, 100  # warmup 10 steps, floor 0.01
    lr = lambda t: warmup_cosine_lr(t, total, base, warmup=0.1, min_lr_ratio=0.1)  # noqa: E731
    assert lr(0) == pytest.approx(0.01)  # first update already moves: base * 1/10
    assert lr(9) == pytest.approx(0.1)  # last warmup step reaches base
    assert lr(10) == pytest.approx(0.1)  # cosine starts at base
    assert lr(55) == pytest.approx(0.01 + 0.09 * 0.5)  # half way through the cosine
    assert lr(99) == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert lr(100) == pytest.approx(0.01)  # the floor


class RecordLr(Technique):
    name = "record_lr"

    def __init__(self):
        self.lrs = []

    def after_micro_backward(self, state, micro_index):
        if micro_index == 0:
            self.lrs.append(state.optimizer.param_groups[0]["lr"])


def _data(n=400):
    g = torch.Generator().manual_seed(0)
    return from_tensors(torch.randn(n, 8, generator=g), torch.randint(0, 2, (n,), generator=g))


def test_loop_uses_scheduled_lr_each_step():
    recorder = RecordLr()
    torch.manual_seed(0)
    leantrain.fit(nn.Linear(8, 2), _data(), epochs=2, batch_size=32, lr=0.1, device="cpu",
                  techniques=[WarmupCosine(warmup=0.2, min_lr_ratio=0.0), recorder])
    total = 2 * math.ceil(320 / 32)
    assert recorder.lrs == pytest.approx([warmup_cosine_lr(t, total, 0.1, 0.2, 0.0) for t in range(total)])


def test_schedule_reaches_its_floor_at_the_end_under_adaptive_accumulation():
    recorder, schedule = RecordLr(), WarmupCosine(warmup=0.1, min_lr_ratio=0.1)
    accumulation = AdaptiveAccumulation(k_min=2, k_max=4, lr_scaling="none", update_every=2)
    torch.manual_seed(0)
    leantrain.fit(nn.Linear(8, 2), _data(), epochs=2, batch_size=16, lr=0.1, device="cpu",
                  techniques=[accumulation, schedule, recorder])
    assert schedule.micro_batches_done == 2 * 20  # every micro-batch counted once
    assert len(recorder.lrs) < 40  # fewer optimizer steps than micro-batches
    assert recorder.lrs[-1] < 0.1 * 0.2  # near the floor (0.01) at the last step, not stuck mid-cosine
