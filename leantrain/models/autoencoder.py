"""Convolutional autoencoder (seed 002's ConvAutoencoder): two stride-2 convs down, two transposed convs
up, a sigmoid output for images in [0, 1]. Output padding is chosen per layer, so odd sides (7, 25) come
back at their own size."""
from __future__ import annotations

import torch
from torch import nn

from leantrain.data.dataset import Dataset
from leantrain.models.common import image_shape, layer_flops, require_task
from leantrain.models.registry import MODELS


class ConvAutoencoder(nn.Module):
    def __init__(self, in_shape: tuple[int, int, int], width: int = 16, sigmoid: bool = True):
        super().__init__()
        channels, height, width_px = in_shape
        sides = [(height, width_px)]
        for _ in range(2):
            h, w = sides[-1]
            sides.append(((h + 1) // 2, (w + 1) // 2))  # stride 2, kernel 3, padding 1
        widths = [channels, width, 2 * width]
        down = [
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU())
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        ]
        up = []
        for index, (c_in, c_out) in enumerate([(widths[2], widths[1]), (widths[1], widths[0])]):
            (h_in, w_in), (h_out, w_out) = sides[2 - index], sides[1 - index]
            padding = (h_out - (2 * h_in - 1), w_out - (2 * w_in - 1))  # what stride 2 alone falls short of
            last = index == 1
            act: nn.Module = (nn.Sigmoid() if sigmoid else nn.Identity()) if last else nn.ReLU()
            deconv = nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=padding)
            up.append(nn.Sequential(deconv, act))
        self.blocks = nn.Sequential(*down, *up)  # called as one: checkpointing segments it
        self._flops = layer_flops(self, in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def pipeline_parts(self) -> tuple[nn.Module, nn.Sequential, nn.Module]:
        """(what runs before the blocks, the blocks, what runs after): pipeline stages split here."""
        return nn.Identity(), self.blocks, nn.Identity()

    def flops_per_sample(self) -> float:
        return self._flops


@MODELS.register("conv-autoencoder", "conv autoencoder: 2 convs down, 2 transposed convs up; options width, sigmoid")
def conv_autoencoder(data: Dataset, *, width: int = 16, sigmoid: bool = True) -> ConvAutoencoder:
    require_task(data, "reconstruction", "conv-autoencoder")
    return ConvAutoencoder(image_shape(data, "conv-autoencoder"), width, sigmoid)
