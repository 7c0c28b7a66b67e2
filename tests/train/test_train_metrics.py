"""Per-epoch training accuracy, counted on the forward passes training makes anyway."""
import copy
import time

import pytest
import torch
from torch import nn

import leantrain as lt
from leantrain.data.batches import TensorBatches
from leantrain.techniques import Technique
from leantrain.train import correct_count
from leantrain.train.correct_count import CorrectCount
from leantrain.train.guards import Guards


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


# 8 steps an epoch and 163 (their outputs compared at its end), and 163 compared every 64 steps, then the rest
@pytest.mark.parametrize("n, batch_size, keep_outputs", [(250, 32, None), (1300, 8, None), (1300, 8, 64)])
def test_train_accuracy_equals_a_direct_count_of_each_steps_predictions(monkeypatch, n, batch_size, keep_outputs):
    if keep_outputs:
        monkeypatch.setattr(correct_count, "KEEP_OUTPUTS", keep_outputs)
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


def test_the_work_at_an_epochs_end_is_timed_with_the_epoch(monkeypatch):
    """The count's last compare (its kept outputs) and the guard's last read are training work: inside time_s."""
    compare, check = CorrectCount.compare_kept, Guards.check

    def slow_compare(self):
        if self.kept_outputs:
            time.sleep(0.2)
        compare(self)

    def slow_check(self, state):
        time.sleep(0.2)
        check(self, state)

    monkeypatch.setattr(CorrectCount, "compare_kept", slow_compare)
    monkeypatch.setattr(Guards, "check", slow_check)
    record = lt.fit(nn.Linear(6, 3), _data(), epochs=2, batch_size=32)
    assert all(epoch["time_s"] >= 0.4 for epoch in record["epochs"])  # 8 steps of a linear model: milliseconds


def test_a_language_model_records_train_token_accuracy_and_tokens_per_second():
    data = lt.data.load("wikitext-sim:n_tokens=3000,seq_len=16,vocab_size=32", seed=0)
    from leantrain.models import build

    record = lt.fit(build("gpt2-tiny", data), data, epochs=1, batch_size=8)
    epoch = record["epochs"][0]
    assert 0.0 <= epoch["train_token_acc"] <= 1.0
    assert epoch["train_tokens_per_s"] > 0
