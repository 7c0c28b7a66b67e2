"""Activation checkpointing: same numbers as the plain model, less activation memory, measured honestly."""
import pytest
import torch
from torch import nn

from leantrain.data import from_tensors
from leantrain.models.mlp import MLP
from leantrain.techniques.checkpointing import (
    checkpoint_modules,
    checkpointed,
    spread,
    uncheckpoint_modules,
    wrap_count,
)
from leantrain.train.metrics import SavedTensorMeter

L, WIDTH, INNER = 16, 64, 256


class ResidualStack(nn.Module):
    """L blocks that save more than their input (an inner layer 4x as wide): what checkpointing can save."""

    def __init__(self, depth=L):
        super().__init__()
        self.embed = nn.Linear(32, WIDTH)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(WIDTH, INNER), nn.ReLU(), nn.Linear(INNER, WIDTH))
                                    for _ in range(depth))
        self.head = nn.Linear(WIDTH, 5)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def _step(model, x, y, meter=None):
    model.zero_grad(set_to_none=True)
    params = list(model.parameters())
    meter = meter or SavedTensorMeter(params)
    with meter.measure():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        with meter.backward():
            loss.backward()
    return loss.detach(), [p.grad.clone() for p in params], meter.peak_bytes


def _pair(factory=lambda: MLP(32, 5, hidden=64, depth=L)):
    torch.manual_seed(0)
    plain, ckpt = factory(), factory()
    ckpt.load_state_dict(plain.state_dict())
    return plain, ckpt


def test_settings_wrap_evenly_spaced_blocks():
    assert wrap_count("sqrt", 16) == 4 and wrap_count("sqrt", 10) == 3 and wrap_count(50, 8) == 8
    assert wrap_count("full", 7) == 7 and wrap_count("selective", 7) == 7 and wrap_count("off", 7) == 0
    assert spread(4, 16) == [0, 4, 8, 12] and spread(3, 10) == [0, 3, 6] and spread(5, 5) == [0, 1, 2, 3, 4]


def test_checkpointed_stack_gives_same_loss_and_gradients():
    plain, ckpt = _pair()
    assert checkpoint_modules(ckpt, "sqrt") == ["blocks.0", "blocks.4", "blocks.8", "blocks.12"]
    assert list(ckpt.state_dict()) == list(plain.state_dict())  # checkpoints stay plain
    x, y = torch.randn(64, 32), torch.randint(0, 5, (64,))
    loss_a, grads_a, _ = _step(plain, x, y)
    loss_b, grads_b, _ = _step(ckpt, x, y)
    assert torch.allclose(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        assert torch.allclose(a, b, atol=1e-6)
    uncheckpoint_modules(ckpt)
    assert checkpointed(ckpt) == [] and type(ckpt.blocks) is torch.nn.ModuleList


def test_full_checkpointing_keeps_block_inputs_and_counts_the_recomputation():
    plain, ckpt = _pair(ResidualStack)
    checkpoint_modules(ckpt, "full")
    batch = 256
    x, y = torch.randn(batch, 32), torch.randint(0, 5, (batch,))
    _, _, plain_bytes = _step(plain, x, y)
    _, _, ckpt_bytes = _step(ckpt, x, y)
    inner, block_input = batch * INNER * 4, batch * WIDTH * 4
    assert plain_bytes >= L * (inner + block_input)  # each block keeps its input and its inner ReLU output
    assert ckpt_bytes <= 0.35 * plain_bytes
    # Honest: the L kept inputs AND one recomputed block's inner activation were live together.
    assert ckpt_bytes >= L * block_input + inner


def test_a_block_that_saves_only_its_input_saves_nothing_when_checkpointed():
    # The MLP's blocks (Linear, ReLU) save their input and their output, the next block's input: wrapped, each
    # still keeps its input. The record says so rather than claim a saving.
    plain, ckpt = _pair()
    checkpoint_modules(ckpt, "full")
    x, y = torch.randn(256, 32), torch.randint(0, 5, (256,))
    _, _, plain_bytes = _step(plain, x, y)
    _, _, ckpt_bytes = _step(ckpt, x, y)
    assert ckpt_bytes >= 0.95 * plain_bytes


def test_checkpointing_inside_fit_reports_lower_activation_bytes():
    import leantrain
    from leantrain.techniques import ActivationCheckpointing

    g = torch.Generator().manual_seed(0)
    data = from_tensors(torch.randn(300, 32, generator=g), torch.randint(0, 5, (300,), generator=g))
    runs = {}
    for name, techniques in (("plain", []), ("ckpt", [ActivationCheckpointing("full")])):
        model, _ = _pair(ResidualStack)
        runs[name] = leantrain.fit(model, data, epochs=1, batch_size=128, device="cpu", techniques=techniques)
        assert checkpointed(model) == []  # handed back unwrapped
    ratio = runs["ckpt"]["epochs"][0]["activation_bytes"] / runs["plain"]["epochs"][0]["activation_bytes"]
    assert 0.15 < ratio < 0.45
    assert runs["ckpt"]["epochs"][0]["checkpointed_modules"] == [f"blocks.{i}" for i in range(L)]
    assert runs["ckpt"]["epochs"][0]["val_loss"] == pytest.approx(runs["plain"]["epochs"][0]["val_loss"], rel=1e-5)


class NormStack(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU()) for _ in range(4))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x.sum()


@pytest.mark.parametrize("setting", ["sqrt", "full", "selective"])
def test_recomputation_does_not_update_batch_norm_running_statistics_twice(setting):
    torch.manual_seed(0)
    plain, checkpointed_stack = NormStack(), NormStack()
    checkpointed_stack.load_state_dict(plain.state_dict())
    checkpoint_modules(checkpointed_stack, setting)
    x = torch.randn(32, 8)
    for model in (plain, checkpointed_stack):
        loss = model(x)
        if setting != "selective":  # torch allows one backward through a selectively checkpointed region
            loss.backward(retain_graph=True)  # a second backward through the kept graph recomputes again
        loss.backward()
    for (name, a), b in zip(plain.state_dict().items(), checkpointed_stack.state_dict().values()):
        assert torch.equal(a, b), name  # running_mean, running_var, num_batches_tracked included
    for p, q in zip(plain.parameters(), checkpointed_stack.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_a_forward_the_instance_already_had_runs_checkpointed_and_is_given_back():
    torch.manual_seed(0)
    model = MLP(32, 5, hidden=16, depth=2)
    block = model.blocks[0]
    own = block.forward = lambda x: 2 * nn.Sequential.forward(block, x)  # e.g. a library's hook on the instance
    x = torch.randn(8, 32)
    expected = model(x)
    checkpoint_modules(model, "full")
    torch.testing.assert_close(model(x), expected)
    uncheckpoint_modules(model)
    assert block.forward is own and "forward" not in vars(model.blocks[1])
