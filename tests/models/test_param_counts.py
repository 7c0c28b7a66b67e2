"""Parameter counts of the full-size models against their published figures (built on the meta device:
shapes only, no memory, no initialisation)."""
import pytest
import torch

from leantrain import models
from leantrain.data.dataset import Dataset


def _count(spec: str, data: Dataset) -> int:
    with torch.device("meta"):
        model = models.build(spec, data)
    return sum(p.numel() for p in model.parameters())  # a tied weight counts once


def _images(side: int, classes: int) -> Dataset:
    x, y = torch.zeros(2, 3, side, side), torch.zeros(2, dtype=torch.long)
    return Dataset("images", x, y, x, y, num_classes=classes)


@pytest.mark.parametrize(
    "spec,side,classes,expected",
    [
        ("resnet50", 224, 1000, 25_557_032),  # torchvision resnet50
        ("resnet18", 32, 10, 11_173_962),  # the usual CIFAR ResNet-18
        ("vgg11:pool=7,hidden=4096", 224, 1000, 132_863_336),  # torchvision vgg11
    ],
)
def test_image_models_match_published_parameter_counts(spec, side, classes, expected):
    assert _count(spec, _images(side, classes)) == expected


def test_resnet50_flops_are_the_published_4_1_gflops():
    with torch.device("meta"):
        model = models.build("resnet50", _images(224, 1000))
    assert model.flops_per_sample() == pytest.approx(2 * 4.09e9, rel=0.01)  # 4.09 G multiply-adds


def test_gpt2_small_has_124m_parameters_with_tied_embeddings():
    x = torch.zeros(2, 1024, dtype=torch.long)
    data = Dataset("text", x, x, x, x, task="language-model", info={"vocab_size": 50257})
    assert _count("gpt2", data) == 124_439_808
