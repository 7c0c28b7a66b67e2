"""VGG-11 (configuration "A" of Simonyan & Zisserman 2015), with or without batch norm.

The classifier defaults to the CIFAR convention (features pooled to 1x1, 512 -> 512 -> 512 -> classes);
``vgg11:pool=7,hidden=4096`` at 1000 classes is torchvision's ImageNet VGG-11 (132,863,336 parameters).
"""
from __future__ import annotations

import torch
from torch import nn

from leantrain.data.dataset import Dataset
from leantrain.models.common import classes_of, image_shape, layer_flops
from leantrain.models.registry import MODELS

# Channels of each stage (multiples of the first stage's width); each stage ends in a 2x2 max pool.
STAGES_A = [[1], [2], [4, 4], [8, 8], [8, 8]]


class VGG(nn.Module):
    def __init__(
        self, in_shape: tuple[int, int, int], classes: int, *, batch_norm: bool = False, width: int = 64,
        hidden: int = 512, pool: int = 1, dropout: float = 0.5,
    ):
        super().__init__()
        c_in, side = in_shape[0], min(in_shape[1:])
        stages = []
        for multiples in STAGES_A:
            layers: list[nn.Module] = []
            for multiple in multiples:
                c_out = width * multiple
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
                layers += [nn.BatchNorm2d(c_out)] if batch_norm else []
                layers += [nn.ReLU(inplace=True)]
                c_in = c_out
            # Small inputs (28x28 MNIST) run out of pixels before the fifth pool: skip pools at 1x1.
            if side >= 2:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            stages.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*stages)  # called as one: checkpointing segments it
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * pool * pool, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, classes),
        )
        self._flops = layer_flops(self, in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.blocks(x)))

    def pipeline_parts(self) -> tuple[nn.Module, nn.Sequential, nn.Module]:
        """(what runs before the blocks, the blocks, what runs after): pipeline stages split here."""
        return nn.Identity(), self.blocks, nn.Sequential(self.pool, self.head)

    def flops_per_sample(self) -> float:
        return self._flops


@MODELS.register("vgg11", "VGG-11 (8 conv, 3 fc); options batch_norm, width, hidden, pool, dropout")
def vgg11(
    data: Dataset, *, batch_norm: bool = False, width: int = 64, hidden: int = 512, pool: int = 1,
    dropout: float = 0.5, num_classes: int = 0,
) -> VGG:
    return VGG(
        image_shape(data, "vgg11"), classes_of(data, num_classes, "vgg11"),
        batch_norm=batch_norm, width=width, hidden=hidden, pool=pool, dropout=dropout,
    )
