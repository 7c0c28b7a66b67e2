"""GPT-2 (Radford et al. 2019) after nanoGPT: pre-LayerNorm blocks, learned positions, causal attention
through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels where available), and the
token embedding tied to the LM head. GPT-2 small (12 layers, 12 heads, 768 wide, context 1024, vocabulary
50257) has 124,439,808 parameters.

FLOPs per token (forward) are counted exactly for the matrix multiplies, as FlopCounterMode counts them:
2 x (weights of every linear layer, the tied LM head included) + 4 x n_layer x T x d for attention
(QK^T and AV over a full T x T, the causal half not subtracted: the usual PaLM/nanoGPT convention),
where T is the data's sequence length. Layer norms, GELU and softmax are left out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leantrain.data.dataset import Dataset
from leantrain.errors import UsageError
from leantrain.models.common import info_int, require_task, token_length
from leantrain.models.registry import MODELS


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    ctx: int = 1024  # positions the model can attend over
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.n_head, width // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(batch, length, width)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(config.n_embd, 4 * config.n_embd), nn.GELU(approximate="tanh"),
            nn.Linear(4 * config.n_embd, config.n_embd), nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, seq_len: int | None = None):
        super().__init__()
        if config.n_embd % config.n_head:
            raise UsageError(f"gpt2: n_embd={config.n_embd} must be a multiple of n_head={config.n_head}")
        self.config = config
        self.seq_len = seq_len or config.ctx  # the training length, for FLOPs
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.ctx, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.Sequential(*(Block(config) for _ in range(config.n_layer)))  # one call: segments possible
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: one matrix embeds and un-embeds
        self.apply(self._init_weights)
        # GPT-2's scaled init: residual projections shrink with depth, so the residual stream's variance stays put.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (N, T) -> next-token logits (N, T, vocab)."""
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(positions))
        return self.lm_head(self.ln_f(self.blocks(x)))

    def flops_per_sample(self) -> float:
        """Forward FLOPs per token (see the module docstring)."""
        c = self.config
        linear_weights = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 2.0 * linear_weights + 4.0 * c.n_layer * self.seq_len * c.n_embd


def _build(data: Dataset, name: str, vocab_size: int, **options: Any) -> GPT:
    require_task(data, "language-model", name)
    seq_len = token_length(data, name)
    config = GPTConfig(info_int(data, "vocab_size", name, vocab_size), **options)
    if seq_len > config.ctx:
        raise UsageError(
            f"{name}: the data's sequences have {seq_len} tokens, more than ctx={config.ctx}; pass ctx={seq_len}"
        )
    return GPT(config, seq_len)


@MODELS.register("gpt2", "GPT-2 small (124M: 12 layers, 12 heads, 768 wide, ctx 1024); options n_layer, n_head, n_embd")
def gpt2(
    data: Dataset, *, n_layer: int = 12, n_head: int = 12, n_embd: int = 768, ctx: int = 1024, dropout: float = 0.0,
    vocab_size: int = 0,
) -> GPT:
    options = dict(ctx=ctx, n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=dropout)
    return _build(data, "gpt2", vocab_size, **options)


@MODELS.register("gpt2-tiny", "GPT-2 architecture at test size (2 layers, 2 heads, 64 wide, ctx 256)")
def gpt2_tiny(
    data: Dataset, *, n_layer: int = 2, n_head: int = 2, n_embd: int = 64, ctx: int = 256, dropout: float = 0.0,
    vocab_size: int = 0,
) -> GPT:
    options = dict(ctx=ctx, n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=dropout)
    return _build(data, "gpt2-tiny", vocab_size, **options)
