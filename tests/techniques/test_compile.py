"""Compile that compiles: under the real loop (the memory meter included) dynamo traces a graph, and a forward
that dynamo runs eagerly is recorded as not compiled, with the reason."""
import warnings

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import leantrain as lt
from leantrain.techniques import Compile


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
def test_the_loop_compiles_a_graph_with_the_memory_meter_measuring_the_first_step():
    graphs = counters["stats"]["unique_graphs"]
    model = FreshNet()
    record = lt.fit(model, _data(), epochs=1, batch_size=64, device="cpu", techniques=[Compile()])
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo traced the forward (not skipped under the meter)
    assert record["epochs"][0]["compiled"] is True and "compile_error" not in record["epochs"][0]
    assert record["epochs"][0]["activation_bytes"] > 0  # the meter still measured that step
    assert not model._forward_pre_hooks  # the probe is gone: the user's module as it came


@pytest.mark.timeout(240)
def test_a_forward_dynamo_runs_eagerly_is_recorded_as_not_compiled():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = lt.fit(SkippedNet(), _data(), epochs=1, batch_size=64, device="cpu", techniques=[Compile()])
    epoch = record["epochs"][0]
    assert epoch["compiled"] is False and "no graph" in epoch["compile_error"]
    assert any("eager mode" in str(w.message) for w in caught)
