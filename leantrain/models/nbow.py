"""Neural bag of words (seed 002's NBoW): embed tokens, average the non-pad ones, one linear layer."""
from __future__ import annotations

import torch
from torch import nn

from leantrain.data.dataset import Dataset
from leantrain.models.common import classes_of, info_int, token_length
from leantrain.models.registry import MODELS


class NBoW(nn.Module):
    def __init__(self, vocab_size: int, classes: int, seq_len: int, dim: int = 256, pad_index: int = 0):
        super().__init__()
        self.pad_index, self.seq_len = pad_index, seq_len
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=pad_index)
        self.blocks = nn.ModuleList()  # no repeated blocks: nothing for activation checkpointing to wrap
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != self.pad_index).unsqueeze(-1)
        # The pad row of the embedding is zero, so the sum needs no mask; the count does.
        summed = self.embedding(tokens).sum(dim=1)
        mean = summed / mask.sum(dim=1).clamp_min(1).to(summed.dtype)
        return self.head(mean)

    def flops_per_sample(self) -> float:
        # One add per embedding element over the padded length, then the linear layer.
        dim = self.embedding.embedding_dim
        return float(self.seq_len * dim) + 2.0 * dim * self.head.out_features


@MODELS.register("nbow", "neural bag of words: embedding -> mean over non-pad tokens -> linear; options dim")
def nbow(data: Dataset, *, dim: int = 256, vocab_size: int = 0, num_classes: int = 0) -> NBoW:
    seq_len = token_length(data, "nbow")
    return NBoW(
        info_int(data, "vocab_size", "nbow", vocab_size), classes_of(data, num_classes, "nbow"), seq_len, dim,
        int(data.info.get("pad_index", 0)),
    )
