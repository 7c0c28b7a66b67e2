"""Tiny data sets built here (not from leantrain.data), and a few optimizer steps through a Task."""
from __future__ import annotations

import pytest
import torch

from leantrain.data.dataset import Dataset
from leantrain.tasks import get_task


def make_dataset(task: str, n: int = 16, seed: int = 0) -> Dataset:
    """A small data set of each kind the zoo trains on, with learnable structure."""
    g = torch.Generator().manual_seed(seed)
    if task == "image":
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.rand(n, 3, 16, 16, generator=g)
        x[:, 0, 4:12, 4:12] += 0.5 * y[:, None, None]  # class 1: a brighter red square
        return Dataset("images", x, y, x, y, num_classes=2)
    if task == "flat":
        x = torch.randn(n, 12, generator=g)
        y = (x[:, 0] > 0).long()
        return Dataset("flat", x, y, x, y, num_classes=2)
    if task == "text":
        x = torch.randint(3, 50, (n, 10), generator=g)
        x[: n // 2, 7:] = 0  # padded tails
        y = (x[:, 0] > 25).long()
        return Dataset("text", x, y, x, y, num_classes=2, info={"vocab_size": 50, "pad_index": 0})
    if task == "reconstruction":
        # Smooth images (bilinear blow-ups of 3x3 noise): compressible, so an autoencoder can learn them.
        x = torch.nn.functional.interpolate(torch.rand(n, 1, 3, 3, generator=g), size=12, mode="bilinear")
        return Dataset("recon", x, x, x, x, task="reconstruction")
    if task == "language-model":
        # Counting sequences mod 17: each next token is predictable from the current one.
        start = torch.randint(0, 17, (n, 1), generator=g)
        seq = (start + torch.arange(17)) % 17
        x, y = seq[:, :-1], seq[:, 1:]
        return Dataset("count", x, y, x, y, task="language-model", info={"vocab_size": 17})
    if task == "seq2seq":
        return copy_task(n, g)
    raise ValueError(task)


def copy_task(n: int, g: torch.Generator, vocab: int = 12, max_len: int = 6) -> Dataset:
    """Target = source reversed, BOS ... EOS, padded with 0; ids 3.. are symbols."""
    lengths = torch.randint(2, max_len + 1, (n,), generator=g)
    src = torch.zeros(n, max_len, dtype=torch.long)
    tgt = torch.zeros(n, max_len + 2, dtype=torch.long)
    for i, length in enumerate(lengths.tolist()):
        symbols = torch.randint(3, vocab, (length,), generator=g)
        src[i, :length] = symbols
        tgt[i, 0], tgt[i, 1 : length + 1], tgt[i, length + 1] = 1, symbols.flip(0), 2
    info = {"vocab_size": vocab, "pad_index": 0, "bos_index": 1, "eos_index": 2, "max_target_len": max_len + 2}
    return Dataset("reverse", src, tgt, src, tgt, task="seq2seq", info=info)


def train_losses(model: torch.nn.Module, data: Dataset, steps: int = 30, lr: float = 3e-3) -> list[float]:
    """Per-unit training losses of full-batch Adam steps, through the data set's Task as the loop uses it."""
    task = get_task(data.task)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        x, y = data.x_train, data.y_train
        loss = task.loss_sum(task.forward(model, x, y), y) / task.units(y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture
def dataset():
    return make_dataset


@pytest.fixture
def losses_of():
    return train_losses
