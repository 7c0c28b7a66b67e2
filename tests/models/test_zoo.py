"""Every registered model: builds from a data set, trains (loss falls), runs its blocks in order, counts FLOPs."""
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from leantrain import models
from leantrain.errors import UsageError
from leantrain.tasks import get_task
from leantrain.techniques.checkpointing import checkpoint_modules
from leantrain.techniques.precision import keep_unsupported_in_fp32

# (spec at a tiny size, kind of data it trains on)
TINY = [
    ("mlp:hidden=32,depth=2", "flat"),
    ("cnn:width=4,hidden=32,dropout=0", "image"),
    ("vgg11:width=8,hidden=32,dropout=0", "image"),
    ("vgg11:width=4,hidden=32,dropout=0,batch_norm=true", "image"),
    ("resnet18:width=4", "image"),
    ("resnet50:width=4", "image"),
    ("nbow:dim=16", "text"),
    ("conv-autoencoder:width=4", "reconstruction"),
    ("gpt2-tiny:n_embd=32", "language-model"),
    ("gpt2:n_layer=2,n_head=2,n_embd=32", "language-model"),
    ("seq2seq:emb=8,hidden=16", "seq2seq"),
    ("seq2seq-transformer:d_model=16,heads=2,ff=32,encoder_layers=1,decoder_layers=1", "seq2seq"),
]
NO_BLOCKS = {"nbow", "seq2seq", "seq2seq-transformer"}  # no run of identical tensor -> tensor blocks to checkpoint


def test_every_registered_model_has_a_tiny_case():
    assert {spec.split(":")[0] for spec, _ in TINY} == set(models.MODELS.names())


@pytest.mark.parametrize("spec,kind", TINY, ids=[s for s, _ in TINY])
def test_model_trains_on_its_task_loss_falls(spec, kind, dataset, losses_of):
    torch.manual_seed(0)
    data = dataset(kind)
    model = models.build(spec, data)
    # Plain VGG (no batch norm) needs a gentler step than the others.
    losses = losses_of(model, data, steps=40, lr=3e-3 if spec.startswith("vgg11:width=8") else 1e-2)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.dim() > 1)


@pytest.mark.parametrize("spec,kind", TINY, ids=[s for s, _ in TINY])
def test_forward_runs_every_block_once_in_order(spec, kind, dataset):
    data = dataset(kind)
    model = models.build(spec, data)
    if spec.split(":")[0] in NO_BLOCKS:
        assert isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) == 0
        return
    # An nn.Sequential the forward calls as one: its order is known, so checkpointing can recompute it in segments.
    assert type(model.blocks) is torch.nn.Sequential and len(model.blocks) >= 2
    calls = []
    model.blocks.register_forward_pre_hook(lambda module, args: calls.append(module))
    order = []
    for index, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda module, args, index=index: order.append(index))
    model.eval()
    with torch.no_grad():
        model(data.x_val[:2])
    assert order == list(range(len(model.blocks))) and calls == [model.blocks]


@pytest.mark.parametrize(
    "spec,kind",
    [("mlp:hidden=32,depth=2", "flat"), ("cnn:width=4", "image"), ("vgg11:width=4,batch_norm=true", "image"),
     ("resnet18:width=4", "image"), ("resnet50:width=4", "image"), ("conv-autoencoder:width=4", "reconstruction")],
)
def test_flops_per_sample_match_torch_flop_counter(spec, kind, dataset):
    data = dataset(kind)
    model = models.build(spec, data).eval()
    batch = data.x_val[:3]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(batch)
    assert model.flops_per_sample() == pytest.approx(counter.get_total_flops() / len(batch), rel=1e-9)


def test_mlp_flops_are_two_per_weight(dataset):
    model = models.build("mlp:hidden=32", dataset("flat"))
    assert model.flops_per_sample() == 2 * (12 * 32 + 32 * 2)


def test_nbow_averages_only_non_pad_tokens(dataset):
    data = dataset("text")
    model = models.build("nbow:dim=8", data).eval()
    tokens = torch.tensor([[5, 7, 0, 0, 0, 0, 0, 0, 0, 0]])
    mean = model.embedding.weight[[5, 7]].mean(0)
    torch.testing.assert_close(model(tokens)[0], model.head(mean))


def test_models_reject_data_of_the_wrong_kind(dataset):
    with pytest.raises(UsageError, match="gpt2-tiny.*language-model"):
        models.build("gpt2-tiny", dataset("image"))
    with pytest.raises(UsageError, match="resnet18.*images"):
        models.build("resnet18", dataset("text"))
    with pytest.raises(UsageError, match="nbow.*classes"):
        models.build("nbow", dataset("language-model"))


@pytest.mark.parametrize("setting", ["full", "sqrt", "selective"])
@pytest.mark.parametrize("spec,kind", [t for t in TINY if t[0].split(":")[0] not in NO_BLOCKS])
def test_checkpointed_blocks_give_the_same_loss_and_gradients(spec, kind, setting, dataset):
    data = dataset(kind)
    task = get_task(data.task)
    torch.manual_seed(0)
    model = models.build(spec, data)

    def loss_and_grads():
        model.zero_grad()
        loss = task.loss_sum(task.forward(model, data.x_train, data.y_train), data.y_train)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    plain_loss, plain_grads = loss_and_grads()
    assert checkpoint_modules(model, setting) == [f"blocks.{i}" for i in range(len(model.blocks))]  # in segments
    loss, grads = loss_and_grads()
    torch.testing.assert_close(loss, plain_loss)
    for got, expected in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spec,kind", TINY, ids=[s for s, _ in TINY])
def test_model_trains_and_evaluates_under_bf16_autocast(spec, kind, dataset):
    data = dataset(kind)
    task = get_task(data.task)
    torch.manual_seed(0)
    model = models.build(spec, data)
    # What MixedPrecision does first: layers this CPU cannot run in bf16 (LSTM without bf16 hardware) stay fp32.
    keep_unsupported_in_fp32(model, torch.device("cpu"), torch.bfloat16)
    # torch 2.13 CPU: oneDNN's bf16 weight gradient of a stride-2 3x3 conv on a 2x2 input (ResNet-50's last
    # stage at this test's 16x16 images) returns uninitialised memory (NaN/1e22) from the second call on in a
    # process; the native kernel is correct. Test our model, not that upstream kernel.
    with torch.backends.mkldnn.flags(enabled=not spec.startswith("resnet50")):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = task.loss_sum(task.forward(model, data.x_train, data.y_train), data.y_train)
        loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        output = task.forward(model, data.x_val, data.y_val)
        sums = {k: float(v) for k, v in task.metric_sums(output, data.y_val).items()}
    result = task.finalize(sums, task.units(data.y_val))
    assert task.metric in result and math.isfinite(result[task.metric])
