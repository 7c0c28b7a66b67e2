"""Compile that compiles: under the real loop (the memory meter included) dynamo traces a graph, and a forward
that dynamo runs eagerly is recorded as not compiled, with the reason. The compile time is recorded apart
(``compile_s``, ``val_compile_s``) and left out of the epoch's times and rates."""
import json
import warnings

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import leantrain as lt
from leantrain.cli import main
from leantrain.techniques import Compile

COMPILE_SLEEP_S = 2  # inductor sleeps this long in each graph's code generation: compilation that takes seconds


@pytest.fixture
def slow_cold_compile():
    """Every graph compiled afresh (no cache hit from an earlier test) and COMPILE_SLEEP_S longer: compile time is then
    seconds whatever the machine, while training the tests' few steps of a tiny MLP takes milliseconds (0.8 s seen
    beside another test on a loaded 2-core CI machine), so "compilation is not in time_s" is checked with a margin
    no machine's load erases."""
    torch._dynamo.reset()
    with torch._inductor.config.patch(sleep_sec_TESTING_ONLY=COMPILE_SLEEP_S, fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        yield


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    return lt.data.from_tensors(x, (x[:, 0] > 0).long())


class FreshNet(nn.Module):
    """A class no other test compiles: its graph cannot come from dynamo's cache."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SkippedNet(FreshNet):
    @torch.compiler.disable  # dynamo runs it eagerly, without an error: what a silent failure looks like
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.mark.timeout(240)
def test_the_loop_compiles_a_graph_with_the_memory_meter_measuring_the_first_step(slow_cold_compile):
    graphs = counters["stats"]["unique_graphs"]
    model = FreshNet()
    record = lt.fit(model, _data(), epochs=2, batch_size=64, device="cpu", techniques=[Compile()])
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo traced the forward (not skipped under the meter)
    first, second = record["epochs"]
    assert first["compiled"] is True and "compile_error" not in first
    assert first["activation_bytes"] > 0  # the meter still measured that step
    assert not model._forward_pre_hooks  # the probe is gone: the user's module as it came
    # Compilation is timed apart, not hidden in epoch 1: seconds of it, against milliseconds of training 4 steps of
    # a tiny MLP (time_s would hold both). Eval mode compiles its own graph, in validation; epoch 2 compiles nothing.
    # One sleep for each graph compiled (a forward and a backward for each batch shape): time_s would hold at least
    # one had it counted any.
    assert first["compile_s"] >= 2 * COMPILE_SLEEP_S and first["time_s"] < COMPILE_SLEEP_S
    assert first["val_compile_s"] >= COMPILE_SLEEP_S
    assert second["compile_s"] == 0 and second["val_compile_s"] == 0
    summary, wall = record["summary"], record["run"]["wall"]["parts_s"]
    assert summary["compile_s"] == pytest.approx(first["compile_s"] + first["val_compile_s"])
    assert summary["total_time_s"] == pytest.approx(summary["train_time_s"] + summary["compile_s"]
                                                    + sum(e["val_time_s"] for e in record["epochs"]))
    assert wall["compile"] == pytest.approx(summary["compile_s"], abs=1e-3)
    assert wall["checkpoints_and_other"] < summary["compile_s"]  # not counted twice


@pytest.mark.timeout(300)
def test_leantrain_train_compile_true_traces_a_graph_and_records_its_compile_time(tmp_path, slow_cold_compile):
    counters.clear()
    assert main(["train", "--model", "mlp:hidden=16", "--data", "healthcare-sim:n=300", "--epochs", "1",
                 "--batch-size", "64", "--device", "cpu", "--compile", "true", "--out", str(tmp_path)]) == 0
    assert counters["stats"]["unique_graphs"] >= 1 and counters["frames"]["ok"] >= 1  # dynamo's own count
    (path,) = tmp_path.glob("*.json")
    epoch = json.loads(path.read_text())["epochs"][0]
    assert epoch["compiled"] is True
    assert epoch["compile_s"] >= 2 * COMPILE_SLEEP_S and epoch["time_s"] < COMPILE_SLEEP_S


@pytest.mark.timeout(240)
def test_a_forward_dynamo_runs_eagerly_is_recorded_as_not_compiled():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = lt.fit(SkippedNet(), _data(), epochs=1, batch_size=64, device="cpu", techniques=[Compile()])
    epoch = record["epochs"][0]
    assert epoch["compiled"] is False and "no graph" in epoch["compile_error"]
    assert any("eager mode" in str(w.message) for w in caught)
    # What dynamo spent trying is still set apart (not training); a run that compiles nothing records none.
    assert epoch["compile_s"] >= 0 and epoch["time_s"] >= 0
    plain = lt.fit(FreshNet(), _data(), epochs=1, batch_size=64, device="cpu")["epochs"][0]
    assert plain["compile_s"] == 0 and plain["val_compile_s"] == 0
