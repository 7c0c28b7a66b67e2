"""Seed 000's feed-forward network: input -> hidden (128, ReLU) -> classes; width and depth configurable."""
from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from leantrain.data.dataset import Dataset
from leantrain.errors import UsageError
from leantrain.models.common import classes_of
from leantrain.models.registry import MODELS


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 128, depth: int = 1, dropout: float = 0.0):
        super().__init__()
        self.hidden = hidden
        widths = [in_features] + [hidden] * depth
        # A Sequential, called as one: checkpointing can recompute its blocks in segments (their order is known).
        self.blocks = nn.Sequential(*(
            nn.Sequential(nn.Linear(w_in, w_out), nn.ReLU(), *([nn.Dropout(dropout)] if dropout else []))
            for w_in, w_out in zip(widths[:-1], widths[1:])
        ))
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x.flatten(1)))

    def pipeline_parts(self) -> tuple[nn.Module, nn.Sequential, nn.Module]:
        """(what runs before the blocks, the blocks, what runs after): pipeline stages split here."""
        return nn.Flatten(), self.blocks, self.head

    def linear_layers(self) -> list[nn.Linear]:
        """The chain of linear layers, input to output (for resizing the hidden width: complexity matching)."""
        return [cast(nn.Linear, cast(nn.Sequential, block)[0]) for block in self.blocks] + [self.head]

    def set_linear_layers(self, layers: list[nn.Linear]) -> None:
        """Replace the chain of linear layers (same count) with resized ones; activations are kept."""
        *hidden, head = layers
        for block, layer in zip(self.blocks, hidden):
            cast(nn.Sequential, block)[0] = layer
        self.head = head
        self.hidden = head.in_features

    def flops_per_sample(self) -> float:
        # 2 FLOPs (multiply + add) per weight of every linear layer.
        return 2.0 * sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))


@MODELS.register("mlp", "feed-forward net (seed 000): input -> 128 ReLU -> classes; options hidden, depth, dropout")
def mlp(data: Dataset, *, hidden: int = 128, depth: int = 1, dropout: float = 0.0) -> MLP:
    if hidden < 1 or depth < 1:
        raise UsageError(f"model 'mlp': hidden={hidden} and depth={depth} must be at least 1")
    if not 0.0 <= dropout < 1.0:
        raise UsageError(f"model 'mlp': dropout={dropout} must be in [0, 1)")
    return MLP(math.prod(data.input_shape), classes_of(data, 0, "mlp"), hidden, depth, dropout)
