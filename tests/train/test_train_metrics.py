"""Per-epoch training accuracy, counted on the forward passes training makes anyway."""
import copy

import pytest
import torch
from torch import nn

import leantrain as lt
from leantrain.data.batches import TensorBatches
from leantrain.techniques import Technique


class Snapshots(Technique):
    """Test double: the weights each optimizer step starts from, to recount its predictions afterwards."""

    name = "snapshots"

    def __init__(self):
        self.weights = {}

    def before_step(self, state):  # also fires once more at an epoch's end, before finding no batch left
        self.weights[state.step] = copy.deepcopy(state.model.state_dict())


def _data(n=250, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return lt.data.from_tensors(x, y)


# 8 steps an epoch (their predictions compared at its end), and 163 (compared every 64 steps, then the rest)
@pytest.mark.parametrize("n, batch_size", [(250, 32), (1300, 8)])
def test_train_accuracy_equals_a_direct_count_of_each_steps_predictions(n, batch_size):
    data = _data(n)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    shadow = copy.deepcopy(model)
    snaps = Snapshots()
    record = lt.fit(model, data, epochs=2, batch_size=batch_size, lr=5e-2, seed=3, techniques=[snaps])
    batches = TensorBatches(data.x_train, data.y_train, batch_size, shuffle=True, seed=3)
    steps = iter(snaps.weights[step] for step in sorted(snaps.weights))
    for epoch in range(2):
        correct = total = 0
        for x, y in batches.epoch(epoch):
            shadow.load_state_dict(next(steps))  # the weights this batch's forward pass saw
            with torch.no_grad():
                correct += int((shadow(x).argmax(-1) == y).sum())
            total += len(y)
        assert record["epochs"][epoch]["train_acc"] == correct / total
    assert total == len(data.x_train)
    # Training moved the weights, so the two epochs' counts differ: the figure follows the model.
    assert record["epochs"][0]["train_acc"] != record["epochs"][1]["train_acc"]


def test_a_language_model_records_train_token_accuracy_and_tokens_per_second():
    data = lt.data.load("wikitext-sim:n_tokens=3000,seq_len=16,vocab_size=32", seed=0)
    from leantrain.models import build

    record = lt.fit(build("gpt2-tiny", data), data, epochs=1, batch_size=8)
    epoch = record["epochs"][0]
    assert 0.0 <= epoch["train_token_acc"] <= 1.0
    assert epoch["train_tokens_per_s"] > 0
