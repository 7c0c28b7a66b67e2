"""Activation checkpointing: same numbers as the plain model, less activation memory, measured honestly."""
import pytest
import torch
from torch import nn

from leantrain.data import from_tensors
from leantrain.models.gpt2 import GPT, GPTConfig
from leantrain.models.mlp import MLP
from leantrain.models.resnet import BasicBlock, ResNet
from leantrain.techniques.checkpointing import (
    checkpoint_modules,
    checkpoint_segments,
    checkpointed,
    spread,
    uncheckpoint_modules,
    wrap_count,
)
from leantrain.techniques.recompute import split_segments
from leantrain.train.metrics import SavedTensorMeter

L, WIDTH, INNER = 16, 64, 256


class ListMLP(nn.Module):
    """The MLP's blocks in a ModuleList its forward iterates: the order is the forward's, unknown to checkpointing."""

    def __init__(self, depth=L):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(32 if i == 0 else 64, 64), nn.ReLU()) for i in range(depth))
        self.head = nn.Linear(64, 5)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


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


def test_settings_count_segments_or_evenly_spaced_blocks():
    assert wrap_count("sqrt", 16) == 4 and wrap_count("sqrt", 10) == 3 and wrap_count(50, 8) == 8
    assert wrap_count("full", 7) == 7 and wrap_count("selective", 7) == 7 and wrap_count("off", 7) == 0
    assert spread(4, 16) == [0, 4, 8, 12] and spread(3, 10) == [0, 3, 6] and spread(5, 5) == [0, 1, 2, 3, 4]
    assert [list(r) for r in split_segments(10, 3)] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


@pytest.mark.parametrize("setting", ["sqrt", 2, "full", "selective"])
def test_checkpointed_stack_gives_same_loss_and_gradients(setting):
    plain, ckpt = _pair()
    # The MLP's blocks sit in an nn.Sequential: all of them are recomputed, in segments (√16 = 4 of 4 blocks).
    assert checkpoint_modules(ckpt, setting) == [f"blocks.{i}" for i in range(L)]
    assert list(ckpt.state_dict()) == list(plain.state_dict())  # checkpoints stay plain
    assert [n for n, _ in ckpt.named_parameters()] == [n for n, _ in plain.named_parameters()]
    x, y = torch.randn(64, 32), torch.randint(0, 5, (64,))
    loss_a, grads_a, _ = _step(plain, x, y)
    loss_b, grads_b, _ = _step(ckpt, x, y)
    assert torch.allclose(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        assert torch.allclose(a, b, atol=1e-6)
    size = {"sqrt": 4, 2: 8, "full": 1, "selective": 4}[setting]  # selective: its probe found √(16·1/1) = 4
    assert checkpoint_segments(ckpt) == [[f"blocks.{i}" for i in range(j, j + size)] for j in range(0, L, size)]
    uncheckpoint_modules(ckpt)
    assert checkpointed(ckpt) == [] and type(ckpt.blocks) is torch.nn.Sequential and "forward" not in vars(ckpt.blocks)


def test_sqrt_segments_hold_about_2_over_sqrt_L_of_the_activations_and_count_the_recomputation():
    # Each Linear + ReLU block saves only its input: one checkpoint per block would keep them all; √L segments keep
    # √L segment inputs and, in backward, one segment's √L blocks (Chen et al. 2016).
    plain, ckpt = _pair()
    checkpoint_modules(ckpt, "sqrt")
    x, y = torch.randn(256, 32), torch.randint(0, 5, (256,))
    _, _, plain_bytes = _step(plain, x, y)
    _, _, ckpt_bytes = _step(ckpt, x, y)
    block_bytes = 256 * 64 * 4  # one block's saved ReLU output
    assert plain_bytes >= L * block_bytes
    assert ckpt_bytes <= 2 / L**0.5 * plain_bytes * 1.15
    # Honest: the 4 kept segment inputs AND one recomputed segment (4 blocks) were live together.
    assert ckpt_bytes >= 8 * block_bytes


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


@pytest.mark.parametrize("factory", [lambda: MLP(32, 5, hidden=64, depth=L), ListMLP], ids=["sequential", "list"])
def test_a_block_that_saves_only_its_input_saves_nothing_when_checkpointed_alone(factory):
    # The MLP's blocks (Linear, ReLU) save their input and their output, the next block's input: wrapped one by one,
    # each still keeps its input. The record says so rather than claim a saving.
    plain, ckpt = _pair(factory)
    checkpoint_modules(ckpt, "full")
    x, y = torch.randn(256, 32), torch.randint(0, 5, (256,))
    _, _, plain_bytes = _step(plain, x, y)
    _, _, ckpt_bytes = _step(ckpt, x, y)
    assert ckpt_bytes >= 0.95 * plain_bytes


def test_selective_runs_plain_a_module_checkpointing_would_not_shrink():
    # In a ModuleList no segments can be formed: each Linear + ReLU block alone would keep as much as it saves, so
    # the probe leaves every one plain and selective holds what no checkpointing holds, no more, nothing recomputed.
    plain, ckpt = _pair(ListMLP)
    assert len(checkpoint_modules(ckpt, "selective")) == L  # before its first training forward: all may be
    x, y = torch.randn(256, 32), torch.randint(0, 5, (256,))
    loss_a, grads_a, plain_bytes = _step(plain, x, y)
    loss_b, grads_b, ckpt_bytes = _step(ckpt, x, y)
    assert checkpointed(ckpt) == [] and ckpt_bytes == plain_bytes and torch.equal(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        assert torch.equal(a, b)


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


def _zoo(name):
    """(model, inputs, targets) of the zoo at a test size: the MLP, the transformer (GPT-2) and ResNet-18."""
    torch.manual_seed(0)
    if name == "mlp":
        return MLP(32, 5, hidden=64, depth=L), torch.randn(256, 32), torch.randint(0, 5, (256,))
    if name == "gpt2":
        model = GPT(GPTConfig(vocab_size=64, ctx=32, n_layer=4, n_head=4, n_embd=64))
        return model, torch.randint(0, 64, (16, 32)), torch.randint(0, 64, (16, 32))
    model = ResNet((3, 16, 16), 10, BasicBlock, [2, 2, 2, 2], width=8)
    return model, torch.randn(32, 3, 16, 16), torch.randint(0, 10, (32,))


def _zoo_step(model, x, y):
    model.zero_grad(set_to_none=True)
    meter = SavedTensorMeter(list(model.parameters()))
    with meter.measure():
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out.flatten(0, -2), y.flatten())
        with meter.backward():
            loss.backward()
    return meter.peak_bytes, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name", ["mlp", "gpt2", "resnet18"])
def test_selective_holds_less_than_no_checkpointing_on_the_zoos_mlp_transformer_and_resnet(name):
    model, x, y = _zoo(name)
    plain_bytes, plain_grads = _zoo_step(model, x, y)
    checkpoint_modules(model, "selective")
    for _ in range(2):  # the first training forward probes; the second runs as every later one
        selective_bytes, grads = _zoo_step(model, x, y)
    for got, expected in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert checkpointed(model)  # it did recompute something
    # Its kept outputs are counted (selective checkpointing's own cache, shown to the meter): real memory.
    assert selective_bytes < 0.8 * plain_bytes, (selective_bytes, plain_bytes)


def test_selective_keeps_the_products_the_plain_forward_saves_every_second_matmul_recomputed():
    model, x, _ = _zoo("gpt2")
    checkpoint_modules(model, "selective")
    model(x).sum().backward()
    _, probes = vars(model.blocks)["forward"].probes[True]  # the training forward's plan, each block's probe
    # A GPT-2 block's ops that selective may keep, in order: qkv (its q, k, v saved by attention: kept), attention
    # (kept), the attention's projection (its output is not saved by the plain forward: recomputed), the MLP's first
    # Linear (saved by GELU, but the second product the plain forward saves: recomputed), its second (not saved).
    assert [p.keep for p in probes.values()] == [[True, True, False, False, False]] * 4
    assert checkpoint_segments(model) == [[f"blocks.{i}"] for i in range(4)]  # a block's activations >> its input


def test_a_model_that_is_a_sequential_runs_its_own_blocks_in_segments_or_is_checkpointed_whole():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(4)])
    x = torch.randn(4, 8)
    expected = model(x)
    assert checkpoint_modules(model, "sqrt") == ["0", "1", "2", "3"]
    assert checkpoint_segments(model) == [["0", "1"], ["2", "3"]]
    torch.testing.assert_close(model(x), expected)
    # Named by its own class, the model itself is the one module recomputed (no parent runs it in segments).
    assert checkpoint_modules(model, "full", ["Sequential"]) == [""]
    model(x).sum().backward()
    uncheckpoint_modules(model)
    assert "forward" not in vars(model)
