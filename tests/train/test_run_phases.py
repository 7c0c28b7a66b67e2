"""The run's phases: one order, and the preflight sees the model as it will train (prepared by the techniques)."""
import pytest
import torch

import leantrain as lt
from leantrain.config import RunConfig
from leantrain.techniques.checkpointing import checkpointed
from leantrain.train import memory
from leantrain.train import run as run_module
from leantrain.train.run import PHASES, Run, RunRequest

TINY = dict(model="mlp:hidden=16", data="healthcare-sim:n=200", epochs=1, batch_size=32, device="cpu", seed=0)


def test_phases_run_once_each_in_their_one_order():
    run = Run(RunRequest(RunConfig(**TINY)))
    run.execute()
    assert run.trace == list(PHASES) == ["resolve", "build", "prepare", "preflight", "train", "record"]


def test_a_failed_preflight_stops_before_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise lt.UsageError("no room")

    monkeypatch.setattr(run_module, "check_memory", refuse)
    run = Run(RunRequest(RunConfig(**TINY)))
    with pytest.raises(lt.UsageError, match="no room"):
        run.execute()
    assert run.trace == ["resolve", "build", "prepare", "preflight"]


def test_the_preflight_sees_the_prepared_model_in_the_runs_precision(monkeypatch):
    seen = {}
    real_dry_forward, real_check_memory = run_module.dry_forward, run_module.check_memory

    def dry_forward(model, dataset, config, precision="fp32", check_data=True):
        seen.setdefault("dry", []).append((bool(checkpointed(model)), precision, check_data))
        real_dry_forward(model, dataset, config, precision, check_data)

    def check_memory(model, dataset, config, *args, **kwargs):
        seen["memory"] = (bool(checkpointed(model)), config.precision)
        real_check_memory(model, dataset, config, *args, **kwargs)

    monkeypatch.setattr(run_module, "dry_forward", dry_forward)
    monkeypatch.setattr(run_module, "check_memory", check_memory)
    config = RunConfig(**{**TINY, "model": "mlp:hidden=16,depth=4", "checkpointing": "sqrt"})
    run_module.execute(config, techniques=[lt.MixedPrecision("bf16")])
    # build: the model as built, fp32; preflight: checkpointed, in the precision passed as an object
    # the data are checked once, with the model as built
    assert seen["dry"] == [(False, "fp32", True), (True, "bf16", False)]
    assert seen["memory"] == (True, "bf16")


class ResidualMLP(torch.nn.Module):
    """Blocks that save more than their input (an inner layer 4x as wide), so that checkpointing them saves memory
    (the mlp's Linear-ReLU blocks save only their input: wrapped, they keep the same)."""

    def __init__(self, data, width=64, depth=16):
        super().__init__()
        self.embed = torch.nn.Linear(data.input_shape[0], width)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.ReLU(), torch.nn.Linear(4 * width, width))
            for _ in range(depth))
        self.head = torch.nn.Linear(width, data.num_classes)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def _estimated_and_measured(monkeypatch, checkpointing, model="mlp:hidden=256,depth=16"):
    estimates = []
    real_estimate = memory.estimate

    def estimate(*args, **kwargs):
        estimates.append(real_estimate(*args, **kwargs))
        return estimates[-1]

    monkeypatch.setattr(memory, "estimate", estimate)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**40)  # checked on any machine
    config = RunConfig(**{**TINY, "model": model, "data": "healthcare-sim:n=1000",
                          "batch_size": 256, "checkpointing": checkpointing})
    record = run_module.execute(config)
    (estimate,) = estimates
    trained = estimate.parameters + estimate.gradients + estimate.optimizer + estimate.activations
    return estimate, trained, record["epochs"][0]


@pytest.mark.parametrize("checkpointing", ["off", "sqrt"])
def test_memory_estimate_is_within_25_percent_of_the_measured_peak(monkeypatch, checkpointing):
    _, estimated, epoch = _estimated_and_measured(monkeypatch, checkpointing)
    assert 0.75 * epoch["peak_mem_bytes"] <= estimated <= 1.25 * epoch["peak_mem_bytes"]


def test_the_estimate_sees_checkpointing_reduce_activation_memory(monkeypatch):
    residual = f"{__name__}:ResidualMLP"
    plain, _, _ = _estimated_and_measured(monkeypatch, "off", residual)
    wrapped, _, epoch = _estimated_and_measured(monkeypatch, "full", residual)
    assert wrapped.activations < 0.5 * plain.activations
    assert 0.75 * epoch["activation_bytes"] <= wrapped.activations <= 1.25 * epoch["activation_bytes"]
