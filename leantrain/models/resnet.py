"""ResNet-18 (basic blocks, CIFAR stem: one 3x3 conv, no max pool) and ResNet-50 (bottleneck blocks,
ImageNet stem: 7x7/2 conv and 3x3/2 max pool), as in He et al. 2016.

The bottleneck strides in its 3x3 conv (torchvision's "v1.5"), so ResNet-50 at 1000 classes has
torchvision's 25,557,032 parameters. ``self.blocks`` holds every residual block in order.
"""
from __future__ import annotations

import torch
from torch import nn

from leantrain.data.dataset import Dataset
from leantrain.models.common import classes_of, image_shape, layer_flops
from leantrain.models.registry import MODELS


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out)]


def shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    return nn.Sequential(*conv_bn(c_in, c_out, 1, stride)) if stride != 1 or c_in != c_out else nn.Identity()


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(c_in, planes, 3, stride), nn.ReLU(inplace=True), *conv_bn(planes, planes, 3))
        self.shortcut = shortcut(c_in, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int):
        super().__init__()
        c_out = planes * self.expansion
        self.body = nn.Sequential(
            *conv_bn(c_in, planes, 1), nn.ReLU(inplace=True),
            *conv_bn(planes, planes, 3, stride), nn.ReLU(inplace=True),
            *conv_bn(planes, c_out, 1),
        )
        self.shortcut = shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(
        self, in_shape: tuple[int, int, int], classes: int, block: type[BasicBlock] | type[Bottleneck],
        depths: list[int], *, width: int = 64, imagenet_stem: bool = False,
    ):
        super().__init__()
        if imagenet_stem:
            self.stem = nn.Sequential(*conv_bn(in_shape[0], width, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(*conv_bn(in_shape[0], width, 3), nn.ReLU(inplace=True))
        blocks, c_in = [], width
        for stage, depth in enumerate(depths):
            planes = width * 2**stage
            for index in range(depth):
                blocks.append(block(c_in, planes, 2 if stage > 0 and index == 0 else 1))
                c_in = planes * block.expansion
        self.blocks = nn.Sequential(*blocks)  # called as one: checkpointing segments it
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self._flops = layer_flops(self, in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def pipeline_parts(self) -> tuple[nn.Module, nn.Sequential, nn.Module]:
        """(what runs before the blocks, the blocks, what runs after): pipeline stages split here."""
        return self.stem, self.blocks, self.head

    def flops_per_sample(self) -> float:
        return self._flops


@MODELS.register("resnet18", "ResNet-18, CIFAR stem (3x3 conv, no max pool); options width, num_classes")
def resnet18(data: Dataset, *, width: int = 64, num_classes: int = 0) -> ResNet:
    classes = classes_of(data, num_classes, "resnet18")
    return ResNet(image_shape(data, "resnet18"), classes, BasicBlock, [2, 2, 2, 2], width=width)


@MODELS.register("resnet50", "ResNet-50, ImageNet stem, bottleneck blocks (25.6M params at 1000 classes)")
def resnet50(data: Dataset, *, width: int = 64, num_classes: int = 0) -> ResNet:
    classes = classes_of(data, num_classes, "resnet50")
    return ResNet(image_shape(data, "resnet50"), classes, Bottleneck, [3, 4, 6, 3], width=width, imagenet_stem=True)
