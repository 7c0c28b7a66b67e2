"""Data read batch by batch (issue 16): a torch Dataset streamed, several inputs, and per-rank shards that are
exactly the in-memory path's."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import leantrain as lt
from leantrain.data.batches import TensorBatches
from leantrain.data.streaming import Stream, StreamBatches, StreamVal


def _classes(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


@pytest.mark.parametrize("rank", [0, 1])
def test_each_ranks_streamed_batches_are_the_in_memory_paths(rank):
    x, y = _classes(n=101)
    streamed = StreamBatches(Stream(TensorDataset(x, y)), 8, torch.device("cpu"), seed=3, rank=rank, world_size=2)
    in_memory = TensorBatches(x, y, 8, seed=3, rank=rank, world_size=2)
    assert len(streamed) == len(in_memory) == 7
    for epoch in (0, 1):
        pairs = list(zip(streamed.epoch(epoch), in_memory.epoch(epoch), strict=True))
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in pairs)


def test_streamed_validation_shares_cover_every_sample_once():
    x, y = _classes(n=101)
    val = StreamVal(Stream(TensorDataset(x, y)), torch.device("cpu"))
    seen = torch.cat([yb for rank in (0, 1) for _, yb in val.batches(16, rank, 2)])
    assert torch.equal(seen, y)


def test_a_streamed_dataset_trains_exactly_as_its_tensors_do():
    x, y = _classes()
    runs = []
    for data in (lt.data.from_tensors(x, y), lt.data.from_loader(TensorDataset(x, y), stream=True),
                 lt.data.from_loader(DataLoader(TensorDataset(x, y), batch_size=999), stream=True)):
        torch.manual_seed(0)
        result = lt.fit(nn.Linear(4, 3), data, epochs=2, batch_size=16, lr=0.05)
        runs.append([(e["train_loss"], e["val_loss"], e["val_acc"]) for e in result.epochs])
        assert result["run"]["train_samples"] == 240 and result["run"]["val_samples"] == 60
    assert runs[0] == runs[1] == runs[2]


class Chunks(IterableDataset):
    """Samples generated as they are read, never all held: a stand-in for data larger than memory."""

    def __init__(self, n, seed):
        self.n, self.seed = n, seed

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        for _ in range(self.n):
            x = torch.randn(4, generator=g)
            yield x, (x[0] > 0).long()


def test_an_iterable_dataset_streams_and_needs_a_validation_set():
    torch.manual_seed(0)
    result = lt.fit(nn.Linear(4, 2), lt.data.from_loader(Chunks(2000, 0), val=Chunks(300, 1), stream=True),
                    epochs=3, batch_size=50, lr=0.05)
    assert result["run"]["train_samples"] == 2000 and result.epochs[-1]["train_samples"] == 2000
    assert result.epochs[-1]["val_samples"] == 300 and result.epochs[-1]["val_acc"] > 0.9
    with pytest.raises(lt.UsageError, match="pass val="):
        lt.data.from_loader(Chunks(10, 0), stream=True)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 3), nn.Linear(2, 3)

    def forward(self, left, right):
        return self.a(left) + self.b(right)


@pytest.mark.parametrize("as_dict", [False, True])
def test_a_model_with_several_inputs_trains_on_a_tuple_or_dict_of_tensors(as_dict):
    x, y = _classes()
    inputs = {"left": x[:, :2], "right": x[:, 2:]} if as_dict else (x[:, :2], x[:, 2:])
    torch.manual_seed(0)
    result = lt.fit(TwoInputs(), lt.data.from_tensors(inputs, y), epochs=15, batch_size=16, lr=0.02)
    assert result.epochs[-1]["val_acc"] > 0.7
    assert result.predict(inputs).shape == (300, 3)
    shapes = result["run"]["data_shapes"]["x_batch"]
    assert shapes == ({"left": [64, 2], "right": [64, 2]} if as_dict else [[64, 2], [64, 2]])


def test_inputs_of_different_lengths_are_one_line():
    x, y = _classes()
    with pytest.raises(lt.UsageError, match="same number of samples"):
        lt.data.from_tensors((x[:, :2], x[:-1, 2:]), y)
