"""Complexity matching: widening keeps the function exactly; the width found depends on how hard the data are."""
import pytest
import torch

import leantrain
from leantrain.data import from_tensors
from leantrain.models.mlp import MLP
from leantrain.techniques import ComplexityMatching
from leantrain.techniques.complexity import prune_plan, rebuild_optimizer, resize_model, widen_model


@pytest.mark.parametrize("method", ["net2net", "fresh"])
def test_widening_preserves_the_function(method):
    torch.manual_seed(0)
    model = MLP(10, 3, hidden=5, depth=3)
    x = torch.randn(64, 10)
    before = model(x)
    widen_model(model, 12, torch.Generator().manual_seed(1), method)
    assert [layer.out_features for layer in model.linear_layers()] == [12, 12, 12, 3]
    assert torch.allclose(model(x), before, atol=1e-6, rtol=1e-5)


def test_widening_carries_adam_state_for_old_units():
    torch.manual_seed(0)
    model = MLP(6, 2, hidden=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    torch.nn.functional.cross_entropy(model(torch.randn(32, 6)), torch.randint(0, 2, (32,))).backward()
    optimizer.step()
    old_in = model.linear_layers()[0].weight
    old_moment = optimizer.state[old_in]["exp_avg"].clone()
    moved = widen_model(model, 8, torch.Generator().manual_seed(0), "fresh")
    new_optimizer = rebuild_optimizer(optimizer, model, moved)
    new_in = model.linear_layers()[0].weight
    state = new_optimizer.state[new_in]
    assert torch.equal(state["exp_avg"][:4], old_moment)  # old units keep their moments
    assert torch.count_nonzero(state["exp_avg"][4:]) == 0  # fresh units start from zero moments
    assert new_optimizer.param_groups[0]["lr"] == 0.01
    assert {id(p) for p in new_optimizer.param_groups[0]["params"]} == {id(p) for p in model.parameters()}


def test_pruning_keeps_the_most_important_units():
    torch.manual_seed(0)
    model = MLP(6, 2, hidden=6)
    with torch.no_grad():
        model.head.weight[:, [1, 4]] *= 100  # make units 1 and 4 matter most
    resize_model(model, prune_plan(model.linear_layers(), 2))
    assert model.hidden == 2 and model.head.weight.shape == (2, 2)


def _task(kind, n=2000, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    if kind == "easy":  # two classes, linearly separable up to 10% label noise: 4 units are plenty
        y = (x[:, 0] + x[:, 1] > 0).long()
        flip = torch.rand(n, generator=g) < 0.1
        y[flip] = 1 - y[flip]
    else:  # 16 linear classes through a hidden bottleneck: needs ~16 units
        y = (x @ torch.randn(d, 16, generator=g)).argmax(1)
    return from_tensors(x, y, seed=seed)


def test_complexity_matching_ends_smaller_on_easy_data_than_on_hard_data():
    widths = {}
    for kind in ("easy", "hard"):
        data = _task(kind)
        torch.manual_seed(0)
        technique = ComplexityMatching(start_width=4, max_width=64, min_delta=0.03, patience=2)
        record = leantrain.fit(MLP(16, data.num_classes, hidden=4), data, epochs=14, batch_size=64, lr=1e-2,
                               device="cpu", techniques=[technique])
        history = [e["hidden_width"] for e in record["epochs"]]
        widths[kind] = technique.width
        assert history[0] == 4
    assert widths["easy"] <= 8
    assert widths["hard"] >= 2 * widths["easy"]


def test_resume_rebuilds_the_model_at_the_saved_width_narrower_or_wider():
    from types import SimpleNamespace

    for saved_width in (3, 24):
        model = MLP(6, 2, hidden=8, depth=2)
        state = SimpleNamespace(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=0.01))
        technique = ComplexityMatching(start_width=3, max_width=64)
        technique.load_state_dict({"width": saved_width, "widenings": 1}, state)
        assert [layer.out_features for layer in model.linear_layers()] == [saved_width, saved_width, 2]
        assert {id(p) for p in state.optimizer.param_groups[0]["params"]} == {id(p) for p in model.parameters()}
        assert state.optimizer.param_groups[0]["lr"] == 0.01
