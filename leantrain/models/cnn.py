"""Seed 002's small CIFAR-10 conv net: three conv-ReLU-pool stages (16, 32, 64 channels), then
fc(64*h*w -> 500), dropout, fc(500 -> classes). The flattened size adapts to the input's height and width."""
from __future__ import annotations

import torch
from torch import nn

from leantrain.data.dataset import Dataset
from leantrain.models.common import classes_of, image_shape, layer_flops
from leantrain.models.registry import MODELS


class CNN(nn.Module):
    def __init__(
        self, in_shape: tuple[int, int, int], classes: int, width: int = 16, hidden: int = 500, dropout: float = 0.25
    ):
        super().__init__()
        channels, height, width_px = in_shape
        widths = [channels, width, 2 * width, 4 * width]
        stages = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            # Pool only while there is something to pool: 8x8 inputs (digits) still get three stages.
            pool = nn.MaxPool2d(2) if min(height, width_px) >= 2 else nn.Identity()
            stages.append(nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), pool))
            if isinstance(pool, nn.MaxPool2d):
                height, width_px = height // 2, width_px // 2
        self.blocks = nn.Sequential(*stages)  # called as one: checkpointing segments it
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(widths[-1] * height * width_px, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, classes),
        )
        self._flops = layer_flops(self, in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))

    def pipeline_parts(self) -> tuple[nn.Module, nn.Sequential, nn.Module]:
        """(what runs before the blocks, the blocks, what runs after): pipeline stages split here."""
        return nn.Identity(), self.blocks, self.head

    def flops_per_sample(self) -> float:
        return self._flops


@MODELS.register("cnn", "seed 002's CIFAR conv net: 3 conv-pool stages (16-32-64), fc 500; options width, hidden")
def cnn(data: Dataset, *, width: int = 16, hidden: int = 500, dropout: float = 0.25, num_classes: int = 0) -> CNN:
    return CNN(image_shape(data, "cnn"), classes_of(data, num_classes, "cnn"), width, hidden, dropout)
