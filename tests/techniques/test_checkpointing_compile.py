"""torch.compile with activation checkpointing (issue 25, item 2): dynamo traces through the checkpointed modules (no
graph break: torch.compile recomputes the regions in its compiled backward) and the run trains as eagerly, the
activation meter measuring the first step (it crashed on the compiled backward's higher-order ops)."""
import shutil
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

import leantrain as lt
from leantrain.models.mlp import MLP
from leantrain.techniques import ActivationCheckpointing, Compile
from tests.techniques.test_checkpointing_any_model import LAYOUTS, _data

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="torch.compile on the CPU needs a C compiler")

CASES = {  # name -> (model factory, inputs of n samples, setting)
    "zoo-mlp-segments": (lambda: MLP(8, 5, hidden=16, depth=4), lambda n: torch.randn(n, 8), "sqrt"),
    "hf-encoder-modules": (LAYOUTS["hf-encoder"][0], LAYOUTS["hf-encoder"][1], "full"),
    "torchvision-resnet-selective": (LAYOUTS["torchvision-resnet"][0], LAYOUTS["torchvision-resnet"][1], "selective"),
}


def _fit(case: str, data, compiled: bool) -> tuple[dict, torch.nn.Module]:
    factory, _, setting = CASES[case]
    torch.manual_seed(0)
    model = factory()
    techniques = [ActivationCheckpointing(setting), *([Compile()] if compiled else [])]
    # Batches of 32, 4 steps: compiled kernels round differently, and batch norm over a few values (ResNet's last
    # stage, 2x2) amplifies that over many steps; here eager and compiled agree within 1e-6.
    return lt.fit(model, data, epochs=2, batch_size=32, device="cpu", techniques=techniques, seed=0), model


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", CASES)
def test_compile_traces_through_checkpointed_modules_and_trains_as_eager(case):
    torch.manual_seed(1)
    data = _data(CASES[case][1](80))
    eager, eager_model = _fit(case, data, compiled=False)
    torch._dynamo.reset()
    counters.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "torch.compile failed, training in eager mode" fails here
        compiled, model = _fit(case, data, compiled=True)
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"], dict(counters["graph_break"])
    for got, expected in zip(compiled["epochs"], eager["epochs"], strict=True):
        assert got["compiled"] is True and got["checkpointed_modules"]
        assert got["activation_bytes"] > 0  # measured through the compiled backward
        assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-5)
        assert got["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-5)
    for (name, a), b in zip(eager_model.named_buffers(), model.buffers()):  # batch norm's statistics updated once
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
