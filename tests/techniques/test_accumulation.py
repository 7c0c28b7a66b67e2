"""Adaptive accumulation: the noise-scale estimate is right on a problem with known gradient noise, and k follows it."""
from types import SimpleNamespace

import pytest
import torch

from leantrain.parallel.dist import Dist
from leantrain.techniques.accumulation import AdaptiveAccumulation, choose_accum_steps, noise_scale_terms
from leantrain.techniques.amp import Precision


def test_noise_scale_terms_recover_known_values():
    # E|G_b|² = |G|² + tr(Σ)/b for a batch mean of b samples.
    true_sq, trace = 2.0, 30.0
    small, big = true_sq + trace / 4, true_sq + trace / 32
    est_true, est_trace = noise_scale_terms(small, big, 4.0, 32.0)
    assert est_true == pytest.approx(true_sq) and est_trace == pytest.approx(trace)


def test_choose_accum_steps_clamps_and_limits_change():
    assert choose_accum_steps(100.0, 4, 2, 16) == 8  # at most doubles
    assert choose_accum_steps(1.0, 8, 2, 16) == 4  # at most halves
    assert choose_accum_steps(6.2, 4, 2, 16) == 6
    assert choose_accum_steps(float("inf"), 16, 2, 16) == 16


def _drive(technique, sigmas, dim=100, micro=10, seed=0):
    """Per-sample loss 0.5|w - x|², x ~ N(mu, σ²I): G = w - mu, tr(Σ) = dim σ², so B_noise = dim σ² / |w - mu|².

    The weights never move (no optimizer step), so the truth is fixed. Returns k after each phase.
    """
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros(dim))
    mu = torch.full((dim,), 0.1)  # |G|² = dim * 0.01 = 1.0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = SimpleNamespace(
        model=model, optimizer=optimizer, device=torch.device("cpu"), base_lr=0.1, accum_steps=1,
        precision=Precision(torch.device("cpu")), dist=Dist(),
    )
    state.set_lr = lambda lr: [group.update(lr=lr) for group in optimizer.param_groups]
    technique.on_fit_start(state)
    ks = []
    for sigma, steps in sigmas:
        for _ in range(steps):
            technique.before_step(state)
            k = state.accum_steps
            for i in range(k):
                x = mu + sigma * torch.randn(micro, dim, generator=g)
                loss = 0.5 * (model.w - x).pow(2).sum() / (k * micro)
                loss.backward()
                technique.after_micro_backward(state, i)
            technique.before_optimizer_step(state)
            optimizer.zero_grad(set_to_none=True)
        ks.append(state.accum_steps)
    return ks, state


def test_noise_scale_estimate_within_2x_of_truth():
    technique = AdaptiveAccumulation(k_min=4, k_max=4, update_every=10**9)  # k fixed: pure estimation
    _drive(technique, [(1.0, 300)])
    truth_samples = 100 * 1.0**2 / 1.0
    estimate_samples = technique.noise_scale_micro() * 10
    assert truth_samples / 2 < estimate_samples < truth_samples * 2


def test_k_rises_when_gradient_noise_grows_and_lr_follows_sqrt_rule():
    technique = AdaptiveAccumulation(k_min=2, k_max=16, update_every=5, ema=0.9)
    (k_quiet, k_noisy), state = _drive(technique, [(0.3, 120), (3.0, 150)])
    assert k_quiet <= 3  # B_noise = 9 samples < one micro-batch of 10
    assert k_noisy >= 12  # B_noise = 900 samples = 90 micro-batches, clamped to 16
    assert state.base_lr == pytest.approx(0.1 * k_noisy**0.5)
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * k_noisy**0.5)
