"""timm and torchvision models named on the command line and in ``lt.fit`` (issue 25, item 3), in the vision
venv (``make test`` runs this folder there with ``-m vision``; elsewhere each test skips, naming the extra)."""
import pytest
import torch

import leantrain as lt
from leantrain import models

from .conftest import record, refused, train

pytestmark = pytest.mark.vision
timm = pytest.importorskip("timm", reason="needs leantrain[vision] (timm; the Makefile's .venv-vision)")
torchvision = pytest.importorskip("torchvision", reason="needs leantrain[vision] (torchvision; .venv-vision)")

IMAGES = "cifar10-sim:n=80,classes=3"  # 64 training and 16 validation images, 3x32x32, 3 classes
TIMM = "timm:test_resnet"  # timm's own test ResNet: 0.37M parameters
TORCHVISION = "torchvision:mobilenet_v3_small:width_mult=0.25"  # an option passed through to get_model
TECHNIQUES = ("--precision", "bf16", "--schedule", "warmup-cosine", "--accumulation", "adaptive")
QUICK = ("--epochs", "1", "--batch-size", "16", "--memory-check", "false")


@pytest.mark.parametrize("spec, build", [
    (TIMM, lambda: timm.create_model("test_resnet", num_classes=3)),
    (TORCHVISION, lambda: torchvision.models.mobilenet_v3_small(num_classes=3, width_mult=0.25)),
])
def test_a_named_vision_model_trains_from_the_command_line_in_bf16_with_warmup_cosine_and_accumulation(
        tmp_path, capsys, spec, build):
    code, err = train(capsys, tmp_path, "--model", spec, "--data", IMAGES, *QUICK, *TECHNIQUES)
    assert code == 0, err
    run, epoch = record(tmp_path)["run"], record(tmp_path)["epochs"][0]
    assert run["model"] == spec and sorted(run["techniques"]) == ["accum-adaptive2-16", "bf16", "warmup0.05-cosine"]
    assert run["params"] == sum(p.numel() for p in build().parameters())  # num_classes=3 taken from the data
    assert epoch["val_acc"] is not None and epoch["train_steps"] >= 1


def test_compile_traces_a_timm_model_and_the_record_says_so(tmp_path, capsys, fast_compile):
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    code, err = train(capsys, tmp_path, "--model", TIMM, "--data", IMAGES, *QUICK, "--compile", "true")
    assert code == 0, err
    epoch = record(tmp_path)["epochs"][0]
    assert epoch["compiled"] is True, epoch.get("compile_error")
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo's own count: a graph was traced


def test_fit_takes_a_model_by_name(tmp_path):
    result = lt.fit(TIMM, lt.data.load(IMAGES), epochs=1, batch_size=16, device="cpu", precision="bf16",
                    schedule="warmup-cosine", accumulation="adaptive", memory_check=False, seed=3)
    assert type(result.model).__module__.startswith("timm.") and result.model.num_classes == 3
    assert result["epochs"][0]["val_acc"] is not None and result["run"]["techniques"]


@pytest.mark.parametrize("spec", [TIMM, TORCHVISION])
def test_checkpointing_a_named_vision_model_from_the_command_line(tmp_path, capsys, spec):
    code, err = train(capsys, tmp_path, "--model", spec, "--data", IMAGES, *QUICK, "--checkpointing", "sqrt")
    assert code == 0, err
    epoch = record(tmp_path)["epochs"][0]
    assert epoch["checkpointing"] == "sqrt" and epoch["checkpointed_modules"], epoch


@pytest.mark.parametrize("spec, expected", [
    ("timm:no_such_net", "timm has no model 'no_such_net'"),
    ("timm:resnet_18", "close: resnet18"),
    ("timm:test_resnet:not_an_option=1", "got an unexpected keyword argument 'not_an_option'"),
    ("torchvision:resnet_18", "torchvision has no model 'resnet_18'"),
    ("torchvision:resnet18:not_an_option=1", "cannot be built: TypeError"),
    ("timm:", "names no model; write timm:NAME"),
])
def test_a_bad_vision_model_name_or_option_is_one_line(tmp_path, capsys, spec, expected):
    assert expected in refused(capsys, tmp_path / "out", "--model", spec, "--data", IMAGES, *QUICK)


def test_torchvision_refuses_images_that_are_not_rgb_naming_timm(tmp_path, capsys):
    err = refused(capsys, tmp_path / "out", "--model", "torchvision:resnet18", "--data", "mnist-sim:n=60", *QUICK)
    assert "3-channel images" in err and "in_chans" in err


def test_timm_takes_the_channels_of_the_data(tmp_path):
    model = models.build(TIMM, lt.data.load("mnist-sim:n=40"))  # 1x28x28
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
