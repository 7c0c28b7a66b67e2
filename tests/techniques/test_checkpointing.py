"""Activation checkpointing: same numbers as the plain model, ~2/√L of its activation memory, measured honestly."""
import math

import pytest
import torch

from leantrain.data import from_tensors
from leantrain.models.mlp import MLP
from leantrain.techniques.checkpointing import checkpoint_blocks, segment_count, split_segments, uncheckpoint_blocks
from leantrain.train.metrics import SavedTensorMeter

L = 16


def _step(model, x, y, meter=None):
    model.zero_grad(set_to_none=True)
    params = list(model.parameters())
    meter = meter or SavedTensorMeter(params)
    with meter.measure():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        with meter.backward():
            loss.backward()
    return loss.detach(), [p.grad.clone() for p in params], meter.peak_bytes


def _pair():
    torch.manual_seed(0)
    plain = MLP(32, 5, hidden=64, depth=L)
    ckpt = MLP(32, 5, hidden=64, depth=L)
    ckpt.load_state_dict(plain.state_dict())
    return plain, ckpt


def test_segments_cover_blocks_in_order():
    assert segment_count("sqrt", 16) == 4 and segment_count("sqrt", 10) == 3 and segment_count(50, 8) == 8
    ranges = split_segments(10, 3)
    assert [list(r) for r in ranges] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_checkpointed_stack_gives_same_loss_and_gradients():
    plain, ckpt = _pair()
    assert checkpoint_blocks(ckpt, "sqrt") == 4
    assert list(ckpt.state_dict()) == list(plain.state_dict())  # checkpoints stay plain
    x, y = torch.randn(64, 32), torch.randint(0, 5, (64,))
    loss_a, grads_a, _ = _step(plain, x, y)
    loss_b, grads_b, _ = _step(ckpt, x, y)
    assert torch.allclose(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        assert torch.allclose(a, b, atol=1e-6)
    uncheckpoint_blocks(ckpt)
    assert type(ckpt.blocks) is torch.nn.ModuleList


def test_checkpointed_activation_memory_is_about_2_over_sqrt_L_and_counts_recomputation():
    plain, ckpt = _pair()
    checkpoint_blocks(ckpt, "sqrt")
    x, y = torch.randn(256, 32), torch.randint(0, 5, (256,))
    _, _, plain_bytes = _step(plain, x, y)
    _, _, ckpt_bytes = _step(ckpt, x, y)
    block_bytes = 256 * 64 * 4  # one block's saved ReLU output
    assert plain_bytes >= L * block_bytes
    assert ckpt_bytes <= (2 / math.sqrt(L)) * plain_bytes * 1.15
    # Honest: the 4 kept segment inputs AND one recomputed segment (4 blocks) were live together.
    assert ckpt_bytes >= 8 * block_bytes


def test_checkpointing_inside_fit_reports_lower_activation_bytes():
    import leantrain
    from leantrain.techniques import ActivationCheckpointing

    g = torch.Generator().manual_seed(0)
    data = from_tensors(torch.randn(300, 32, generator=g), torch.randint(0, 5, (300,), generator=g))
    runs = {}
    for name, techniques in (("plain", []), ("ckpt", [ActivationCheckpointing("sqrt")])):
        plain, _ = _pair()
        runs[name] = leantrain.fit(plain, data, epochs=1, batch_size=128, device="cpu", techniques=techniques)
        assert type(plain.blocks) is torch.nn.ModuleList  # handed back unwrapped
    ratio = runs["ckpt"]["epochs"][0]["activation_bytes"] / runs["plain"]["epochs"][0]["activation_bytes"]
    assert 0.3 < ratio < 0.65
    assert runs["ckpt"]["epochs"][0]["val_loss"] == pytest.approx(runs["plain"]["epochs"][0]["val_loss"], rel=1e-5)


def test_recomputation_does_not_update_batch_norm_running_statistics_twice():
    from torch import nn

    from leantrain.techniques.checkpointing import checkpoint_blocks

    class NormStack(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU()) for _ in range(4))

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return x.sum()

    torch.manual_seed(0)
    plain, checkpointed = NormStack(), NormStack()
    checkpointed.load_state_dict(plain.state_dict())
    checkpoint_blocks(checkpointed, "sqrt")
    x = torch.randn(32, 8)
    plain(x).backward()
    checkpointed(x).backward()
    for (name, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        assert torch.equal(a, b), name  # running_mean, running_var, num_batches_tracked included
    for p, q in zip(plain.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
