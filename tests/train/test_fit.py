import math

import pytest
import torch
from torch import nn

import leantrain as lt
from leantrain.techniques import Technique


class TwoLayer(nn.Module):
    """A user's own module: no leantrain conventions at all."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 32), nn.Linear(32, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def _separable(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return lt.data.from_tensors(x, y)


def test_fit_trains_a_user_defined_module_and_returns_the_run_record():
    record = lt.fit(TwoLayer(), _separable(), epochs=20, batch_size=32, lr=1e-2)
    epochs = record["epochs"]
    assert len(epochs) == 20 and epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert record["summary"]["final_val_acc"] > 0.85
    assert record["run"]["model"] == "TwoLayer" and record["run"]["flops_per_sample"] is None
    assert {"schema", "run", "env", "epochs", "summary"} <= record.keys()


def test_registered_models_report_utilisation_against_the_measured_peak():
    data = lt.data.load("healthcare-sim:n=2000")
    from leantrain.models import build

    record = lt.fit(build("mlp", data), data, epochs=1, batch_size=256)
    util = record["summary"]["utilisation"]
    assert 0 < util < 1 and record["env"]["peak_flops"] > 1e9


class Accumulate(Technique):
    """Test double: k micro-batches per optimizer step."""

    def __init__(self, k):
        self.k = k

    def on_fit_start(self, state):
        state.accum_steps = self.k


def test_accumulated_micro_batches_of_unequal_size_give_the_full_batch_step():
    # 100 samples: micro-batches of 32, 32, 32, 4 in one step must equal one batch of 100 (per-sample mean).
    data = _separable(n=125)  # 100 train samples
    torch.manual_seed(0)
    big, small = TwoLayer(), TwoLayer()
    small.load_state_dict(big.state_dict())
    lt.fit(big, data, epochs=1, batch_size=100, lr=0.1, optimizer="sgd")
    lt.fit(small, data, epochs=1, batch_size=32, lr=0.1, optimizer="sgd", techniques=[Accumulate(4)])
    for p, q in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_throughput_counts_samples_and_optimizer_steps_not_micro_batches():
    record = lt.fit(TwoLayer(), _separable(n=1000), epochs=2, batch_size=50, techniques=[Accumulate(4)])
    second = record["epochs"][1]
    assert second["train_steps"] == 4 and second["train_samples"] == 800  # 16 micro-batches in 4 steps
    assert math.isclose(second["samples_per_s"] / second["train_steps_per_s"], 200, rel_tol=1e-6)


def test_time_to_target_is_training_time_until_the_first_epoch_at_target():
    record = lt.fit(TwoLayer(), _separable(), epochs=4, batch_size=32, lr=1e-2, target=0.5)
    epochs = record["epochs"]
    first = next(i for i, e in enumerate(epochs) if e["val_acc"] >= 0.5)
    assert math.isclose(record["summary"]["time_to_target_s"], sum(e["time_s"] for e in epochs[: first + 1]))


def test_techniques_switch_on_by_option_as_well_as_by_object():
    record = lt.fit(TwoLayer(), _separable(), epochs=1, precision="bf16", schedule="warmup-cosine")
    assert record["run"]["techniques"] == ["bf16", "warmup0.05-cosine"]
    with pytest.raises(lt.UsageError, match="precision given both"):
        lt.fit(TwoLayer(), _separable(), epochs=1, precision="bf16", techniques=[lt.MixedPrecision("fp16")])


def test_execute_runs_given_techniques_in_addition_to_the_configs():
    from leantrain.config import RunConfig
    from leantrain.train.run import execute

    config = RunConfig.from_dict({"data": "healthcare-sim:n=300", "epochs": 1, "device": "cpu",
                                  "schedule": "warmup-cosine"})
    record = execute(config, techniques=[lt.MixedPrecision("bf16")], quiet=True)
    assert sorted(record["run"]["techniques"]) == ["bf16", "warmup0.05-cosine"]
    with pytest.raises(lt.UsageError, match="schedule given both"):
        execute(config, techniques=[lt.WarmupCosine()], quiet=True)
