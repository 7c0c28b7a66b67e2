"""The run's phases: one order, and the preflight sees the model as it will train (prepared by the techniques)."""
import pytest
import torch

import leantrain as lt
from leantrain.config import RunConfig
from leantrain.techniques.checkpointing import CheckpointedBlocks
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
        seen.setdefault("dry", []).append((type(getattr(model, "blocks", None)), precision, check_data))
        real_dry_forward(model, dataset, config, precision, check_data)

    def check_memory(model, dataset, config, *args, **kwargs):
        seen["memory"] = (type(model.blocks), config.precision)
        real_check_memory(model, dataset, config, *args, **kwargs)

    monkeypatch.setattr(run_module, "dry_forward", dry_forward)
    monkeypatch.setattr(run_module, "check_memory", check_memory)
    config = RunConfig(**{**TINY, "model": "mlp:hidden=16,depth=4", "checkpointing": "sqrt"})
    run_module.execute(config, techniques=[lt.MixedPrecision("bf16")])
    # build: the model as built, fp32; preflight: checkpointed, in the precision passed as an object
    # the data are checked once, with the model as built
    assert seen["dry"] == [(torch.nn.ModuleList, "fp32", True), (CheckpointedBlocks, "bf16", False)]
    assert seen["memory"] == (CheckpointedBlocks, "bf16")


def _estimated_and_measured(monkeypatch, checkpointing):
    estimates = []
    real_estimate = memory.estimate

    def estimate(*args, **kwargs):
        estimates.append(real_estimate(*args, **kwargs))
        return estimates[-1]

    monkeypatch.setattr(memory, "estimate", estimate)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**40)  # checked on any machine
    config = RunConfig(**{**TINY, "model": "mlp:hidden=256,depth=16", "data": "healthcare-sim:n=1000",
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
    plain, _, _ = _estimated_and_measured(monkeypatch, "off")
    checkpointed, _, epoch = _estimated_and_measured(monkeypatch, "sqrt")
    assert checkpointed.activations < 0.7 * plain.activations
    assert 0.75 * epoch["activation_bytes"] <= checkpointed.activations <= 1.25 * epoch["activation_bytes"]
