"""Activation checkpointing on models that do not follow the zoo's ``self.blocks`` convention (issue 25, item 2).

Local replicas of the layouts of timm (a ViT's ``blocks`` Sequential), torchvision (a ResNet's layer1..layer4 of
BasicBlocks with batch norm), Hugging Face (``encoder.layer``, indexed, called with a keyword argument) and a forward
that indexes ``self.blocks[i]``: on each, checkpointing lowers the activation memory the project measures, gives
the plain model's gradients, keeps every name plain, and the model is handed back unwrapped after ``fit``.
"""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leantrain as lt
from leantrain.cli import main
from leantrain.data import from_tensors
from leantrain.errors import UsageError
from leantrain.experiments.runner import load_experiment, run_experiment
from leantrain.techniques import ActivationCheckpointing
from leantrain.techniques.checkpointing import (
    checkpoint_modules,
    checkpoint_segments,
    checkpointed,
    choose_blocks,
    uncheckpoint_modules,
)
from leantrain.train.metrics import SavedTensorMeter

HERE = __name__  # the module name pytest imported this file under: models named module:Class on the command line
DIM, TOKENS, CLASSES = 32, 12, 5


class Attention(nn.Module):
    def __init__(self, dim=DIM, heads=4):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, dim=DIM):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """timm's pre-norm transformer block."""

    def __init__(self, dim=DIM):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = nn.LayerNorm(dim), Attention(dim), nn.LayerNorm(dim), Mlp(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """timm's layout: ``self.blocks = nn.Sequential(*blocks)``, run as one call."""

    def __init__(self, depth=6, in_features=8):
        super().__init__()
        self.patch_embed = nn.Linear(in_features, DIM)
        self.blocks = nn.Sequential(*[Block() for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(DIM), nn.Linear(DIM, CLASSES)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.patch_embed(x))).mean(1))


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    """torchvision's layout: layer1..layer4, each an nn.Sequential of two BasicBlocks."""

    def __init__(self, width=8):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(2)
        widths = [width, width, 2 * width, 4 * width, 8 * width]
        for i in range(1, 5):
            stride = 1 if i == 1 else 2
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(widths[i - 1], widths[i], stride),
                                                     BasicBlock(widths[i], widths[i])))
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(widths[4], CLASSES)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class EncoderLayer(nn.Module):
    """A Hugging Face layer: called with a keyword argument, returns a tuple."""

    def __init__(self, dim=DIM):
        super().__init__()
        self.attention, self.attention_norm = Attention(dim), nn.LayerNorm(dim)
        self.intermediate, self.output, self.output_norm = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim), nn.LayerNorm(dim)

    def forward(self, hidden_states, attention_mask=None):
        hidden_states = self.attention_norm(hidden_states + self.attention(hidden_states, attention_mask))
        return (self.output_norm(hidden_states + self.output(F.gelu(self.intermediate(hidden_states)))),)


class Encoder(nn.Module):
    def __init__(self, layers=4):
        super().__init__()
        self.layer = nn.ModuleList(EncoderLayer() for _ in range(layers))

    def forward(self, hidden_states, attention_mask):
        for i in range(len(self.layer)):
            hidden_states = self.layer[i](hidden_states, attention_mask=attention_mask)[0]
        return hidden_states


class HfEncoderModel(nn.Module):
    """Hugging Face's layout: ``self.encoder.layer``, a ModuleList the encoder indexes."""

    def __init__(self, in_features=8):
        super().__init__()
        self.embeddings, self.encoder, self.classifier = nn.Linear(in_features, DIM), Encoder(), nn.Linear(DIM, CLASSES)

    def forward(self, x):
        mask = torch.zeros(x.shape[1], x.shape[1], device=x.device)  # additive: every token sees every token
        return self.classifier(self.encoder(self.embeddings(x), mask)[:, 0])


class IndexedBlocks(nn.Module):
    """``self.blocks`` indexed by forward: the old segment wrapper never saw it run (and recorded it checkpointed)."""

    def __init__(self, depth=6, in_features=8):
        super().__init__()
        self.embed, self.blocks, self.head = nn.Linear(in_features, DIM), nn.ModuleList(Block() for _ in range(depth)), \
            nn.Linear(DIM, CLASSES)

    def forward(self, x):
        x = self.embed(x)
        for i in range(len(self.blocks)):
            x = self.blocks[i](x)
        return self.head(x.mean(1))


class NoBlocks(nn.Module):
    """A plain CNN-like model: layers as attributes, nothing repeated in a list."""

    def __init__(self, data=None, in_features=8):
        super().__init__()
        width = data.input_shape[0] if data is not None else in_features
        self.fc1, self.bn1, self.fc2 = nn.Linear(width, 16), nn.BatchNorm1d(16), nn.Linear(16, CLASSES)

    def forward(self, x):
        return self.fc2(F.relu(self.bn1(self.fc1(x))))


def _data(x):
    return from_tensors(x, torch.arange(len(x)) % CLASSES)


def _tokens(n):
    return torch.randn(n, TOKENS, 8)


LAYOUTS = {  # name -> (model factory, inputs of n samples, the modules the automatic choice wraps under full)
    "timm-vit": (VisionTransformer, _tokens, [f"blocks.{i}" for i in range(6)]),
    "torchvision-resnet": (ResNet, lambda n: torch.randn(n, 3, 16, 16), [f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)]),
    "hf-encoder": (HfEncoderModel, _tokens, [f"encoder.layer.{i}" for i in range(4)]),
    "indexed-blocks": (IndexedBlocks, _tokens, [f"blocks.{i}" for i in range(6)]),
}
# What sqrt recomputes: where nn.Sequentials hold the blocks (their order known), round(√L) segments shared out over
# the Sequentials, at least one each; in a ModuleList, round(√L) of the blocks alone, evenly spaced.
SQRT = {
    "timm-vit": [[f"blocks.{i}" for i in range(3)], [f"blocks.{i}" for i in range(3, 6)]],
    "torchvision-resnet": [[f"layer{i}.0", f"layer{i}.1"] for i in range(1, 5)],
    "hf-encoder": [["encoder.layer.0"], ["encoder.layer.2"]],
    "indexed-blocks": [["blocks.0"], ["blocks.3"]],
}


def _pair(layout):
    factory = LAYOUTS[layout][0]
    torch.manual_seed(0)
    plain, wrapped = factory(), factory()
    wrapped.load_state_dict(plain.state_dict())
    return plain, wrapped


def _step(model, x, y):
    """One forward and backward: (activation bytes as the project measures them, the gradients)."""
    model.zero_grad(set_to_none=True)
    params = list(model.parameters())
    meter = SavedTensorMeter(params)
    with meter.measure():
        loss = F.cross_entropy(model(x), y)
        with meter.backward():
            loss.backward()
    return meter.peak_bytes, [p.grad.clone() for p in params]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_full_checkpointing_lowers_activation_memory_with_the_same_gradients_and_names(layout):
    plain, wrapped = _pair(layout)
    names = checkpoint_modules(wrapped, "full")
    assert names == LAYOUTS[layout][2]
    assert list(wrapped.state_dict()) == list(plain.state_dict())  # checkpoints stay plain
    assert [n for n, _ in wrapped.named_parameters()] == [n for n, _ in plain.named_parameters()]  # optimizer state too
    x, y = LAYOUTS[layout][1](16), torch.randint(0, CLASSES, (16,))
    plain_bytes, plain_grads = _step(plain, x, y)
    wrapped_bytes, grads = _step(wrapped, x, y)
    assert wrapped_bytes < 0.75 * plain_bytes, (wrapped_bytes, plain_bytes)
    for got, expected in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    for (name, a), b in zip(plain.state_dict().items(), wrapped.state_dict().values()):
        assert torch.equal(a, b), name  # batch norm's running statistics updated once, not again in recomputation
    uncheckpoint_modules(wrapped)
    assert checkpointed(wrapped) == [] and not any("forward" in vars(m) for m in wrapped.modules())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fit_trains_the_same_losses_records_the_wrapped_modules_and_hands_the_model_back(layout):
    factory, inputs, full = LAYOUTS[layout]
    data = _data(inputs(80))
    records = {}
    for name, techniques in (("plain", []), ("ckpt", [ActivationCheckpointing("sqrt")])):
        torch.manual_seed(0)
        model = factory()
        records[name] = lt.fit(model, data, epochs=1, batch_size=16, device="cpu", techniques=techniques)
        assert checkpointed(model) == [] and type(model) is factory  # handed back as given
    epoch = records["ckpt"]["epochs"][0]
    assert epoch["checkpointing"] == "sqrt"
    assert epoch["checkpoint_segments"] == SQRT[layout]
    assert epoch["checkpointed_modules"] == [name for segment in SQRT[layout] for name in segment]
    assert epoch["train_loss"] == pytest.approx(records["plain"]["epochs"][0]["train_loss"], rel=1e-5)
    assert epoch["val_loss"] == pytest.approx(records["plain"]["epochs"][0]["val_loss"], rel=1e-5)


def test_the_settings_wrap_sqrt_n_or_all_blocks_evenly_spaced_where_the_order_is_unknown():
    model = IndexedBlocks(depth=8)
    assert checkpoint_modules(model, "sqrt") == ["blocks.0", "blocks.2", "blocks.5"]  # round(√8) = 3 of 8
    assert checkpoint_modules(model, 2) == ["blocks.0", "blocks.4"]  # a second call replaces the first
    assert checkpointed(model) == ["blocks.0", "blocks.4"] and checkpoint_segments(model) == [["blocks.0"], ["blocks.4"]]
    assert len(checkpoint_modules(model, 50)) == 8 and len(checkpoint_modules(model, "selective")) == 8
    assert checkpoint_modules(model, "off") == [] and checkpointed(model) == []


def test_the_settings_cut_sequentials_into_segments_shared_out_over_them():
    model, blocks = ResNet(), [f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)]
    # torchvision's four Sequentials of 2 blocks: round(√8) = 3 segments asked, at least one per Sequential.
    assert checkpoint_modules(model, "sqrt") == blocks
    assert checkpoint_segments(model) == [[f"layer{i}.0", f"layer{i}.1"] for i in range(1, 5)]
    checkpoint_modules(model, 8)
    assert checkpoint_segments(model) == [[name] for name in blocks]
    vit = VisionTransformer(depth=6)
    checkpoint_modules(vit, 3)
    assert checkpoint_segments(vit) == [[f"blocks.{i}", f"blocks.{i + 1}"] for i in (0, 2, 4)]
    checkpoint_modules(vit, "full")
    assert checkpoint_segments(vit) == [[f"blocks.{i}"] for i in range(6)]
    uncheckpoint_modules(vit)
    assert not any("forward" in vars(m) for m in vit.modules())


def test_a_copy_of_a_checkpointed_model_recomputes_its_own_modules():
    plain, wrapped = _pair("timm-vit")
    checkpoint_modules(wrapped, "full")
    copied = copy.deepcopy(wrapped)
    assert checkpointed(copied) == checkpointed(wrapped)
    assert all(vars(m)["forward"].module is m for m in copied.modules() if "forward" in vars(m))
    x, y = _tokens(4), torch.randint(0, CLASSES, (4,))
    for got, expected in zip(_step(copied, x, y)[1], _step(plain, x, y)[1], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_selective_keeps_matmul_outputs_lower_memory_than_none_higher_than_full(layout):
    plain, wrapped = _pair(layout)
    x, y = LAYOUTS[layout][1](16), torch.randint(0, CLASSES, (16,))
    plain_bytes, plain_grads = _step(plain, x, y)
    checkpoint_modules(wrapped, "selective")
    selective_bytes, grads = _step(wrapped, x, y)
    for got, expected in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    for (name, a), b in zip(plain.state_dict().items(), wrapped.state_dict().values()):
        assert torch.equal(a, b), name  # batch norm recomputed under the policy: its statistics still updated once
    checkpoint_modules(wrapped, "full")
    full_bytes, _ = _step(wrapped, x, y)
    # The outputs selective checkpointing keeps in its own cache are counted (they are real memory).
    assert full_bytes < selective_bytes < 0.9 * plain_bytes, (full_bytes, selective_bytes, plain_bytes)


def test_checkpointing_modules_picks_the_named_class():
    model = VisionTransformer(depth=4)
    names = checkpoint_modules(model, "full", ["Mlp"])
    assert names == [f"blocks.{i}.mlp" for i in range(4)]
    assert checkpoint_modules(model, "full", [f"{HERE}.Attention", "Block"]) == [f"blocks.{i}" for i in range(4)]
    record = lt.fit(VisionTransformer(depth=4), _data(_tokens(80)), epochs=1, batch_size=16, device="cpu",
                    checkpointing="full", checkpointing_modules="Mlp,Attention")
    assert record["epochs"][0]["checkpointed_modules"] == [f"blocks.{i}.{m}" for i in range(4) for m in ("attn", "mlp")]


def test_a_class_that_matches_nothing_is_one_line_naming_it_and_the_models_classes():
    with pytest.raises(UsageError) as raised:
        choose_blocks(ResNet(), ["Bottleneck"])
    message = str(raised.value)
    assert "\n" not in message and "'Bottleneck' matches no module of ResNet" in message
    assert "BasicBlock (8)" in message and "Sequential (" in message


def test_a_model_without_blocks_is_refused_in_one_line_before_anything_runs(tmp_path):
    data = _data(torch.randn(80, 8))
    with pytest.raises(UsageError) as raised:
        lt.fit(NoBlocks(), data, epochs=1, batch_size=16, device="cpu", checkpointing="sqrt",
               checkpoint_dir=tmp_path / "out")
    message = str(raised.value)
    assert "\n" not in message and "NoBlocks" in message and "--checkpointing-modules" in message
    assert not (tmp_path / "out").exists()
    # Named, its layers wrap.
    record = lt.fit(NoBlocks(), data, epochs=1, batch_size=16, device="cpu", checkpointing="full",
                    checkpointing_modules="Linear")
    assert record["epochs"][0]["checkpointed_modules"] == ["fc1", "fc2"]


def test_the_cli_refuses_a_model_without_blocks_with_exit_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["train", "--model", f"{HERE}:NoBlocks", "--data", "healthcare-sim:n=300", "--epochs", "1",
                 "--device", "cpu", "--quiet", "--checkpointing", "sqrt", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no repeated blocks in NoBlocks" in err and "--checkpointing-modules" in err
    assert not out.exists()
    code = main(["train", "--model", f"{HERE}:NoBlocks", "--data", "healthcare-sim:n=300", "--epochs", "1",
                 "--device", "cpu", "--quiet", "--checkpointing", "sqrt", "--checkpointing-modules", "Conv2d",
                 "--out", str(out)])
    assert code == 2 and "'Conv2d' matches no module of NoBlocks" in capsys.readouterr().err
    assert not out.exists()


def _experiment(tmp_path, cases, checkpointing):
    """An experiment file with the ``cases`` tables (TOML text), a recipe ``plain`` (the baseline) and a recipe
    ``ckpt`` with ``checkpointing``."""
    path = tmp_path / "exp.toml"
    path.write_text(f"""
[experiment]
name = "ckpt"
baseline = "plain"
seeds = [0]

[defaults]
data = "healthcare-sim:n=200"
epochs = 1
device = "cpu"

{cases}
[recipes.plain]

[recipes.ckpt]
checkpointing = "{checkpointing}"
""")
    return path


def test_an_experiment_with_checkpointing_on_a_model_without_blocks_fails_before_any_run(tmp_path):
    path = _experiment(tmp_path, f"""[[cases]]
model = "mlp:hidden=16,depth=4"

[[cases]]
model = "{HERE}:NoBlocks"
""", checkpointing="sqrt")
    out = tmp_path / "results"
    with pytest.raises(UsageError) as raised:
        run_experiment(load_experiment(path), out, quiet=True)
    message = str(raised.value)
    assert "\n" not in message and "recipe 'ckpt'" in message and "no repeated blocks in NoBlocks" in message
    assert not out.exists()  # not one run trained, no folder, no lock


def test_an_experiment_case_may_name_its_modules_and_its_baseline_ignores_them(tmp_path):
    path = _experiment(tmp_path, f"""[[cases]]
model = "{HERE}:NoBlocks"
checkpointing_modules = "Linear"
""", checkpointing="full")
    written = run_experiment(load_experiment(path), tmp_path / "results", quiet=True)
    records = {r["run"]["recipe"]: r for r in (json.loads(p.read_text()) for p in written)}
    assert records["ckpt"]["epochs"][0]["checkpointed_modules"] == ["fc1", "fc2"]
    assert "checkpointed_modules" not in records["plain"]["epochs"][0]
