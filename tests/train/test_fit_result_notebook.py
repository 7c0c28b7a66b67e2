"""A FitResult in a notebook: its epochs as a DataFrame and the report's chart; a user's model keeps train accuracy."""
import pytest
import torch
from torch import nn

import leantrain as lt


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x):
        return {"logits": self.net(x), "features": x}


def _data():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    return lt.data.from_tensors(x, (x[:, 0] > 0).long())


def test_to_pandas_and_plot_show_the_records_epochs():
    pytest.importorskip("pandas")
    result = lt.fit(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)), _data(), epochs=2, device="cpu")
    frame = result.to_pandas()
    assert list(frame["epoch"]) == [1, 2]
    assert list(frame["train_acc"]) == [e["train_acc"] for e in result.epochs]
    assert type(result.plot()).__name__ == "Figure"


def test_a_dict_output_model_records_train_accuracy_from_the_picked_output():
    data = _data()
    torch.manual_seed(0)
    result = lt.fit(DictOut(), data, epochs=6, lr=0.01, device="cpu", output_key="logits")
    assert all(0.0 <= e["train_acc"] <= 1.0 for e in result.epochs)
    assert result.epochs[-1]["train_acc"] > 0.6  # a linearly separable rule, learned
