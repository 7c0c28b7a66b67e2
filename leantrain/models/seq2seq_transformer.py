"""An encoder-decoder transformer for seq2seq tasks (Vaswani et al. 2017), small enough for a CPU: pre-norm
blocks, learned positions, one token embedding shared by source, target and output layer (the task's sides
share an alphabet).

``model(src, tgt_in)`` -> teacher-forced logits (N, T, vocab); ``decode=True`` adds a greedy decode. The cached
decoder runs the encoder once, computes each block's cross-attention keys/values from it once, and keeps each
block's self-attention keys/values for the tokens decoded so far (the key/value cache, preallocated for the whole
decode and filled a position a step, not concatenated anew each step), so each step runs one position.
``decode_cache = False`` recomputes the whole model on the prefix each step (``models/decoding.py``); the tokens
are the same.
"""
from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from leantrain.data.dataset import Dataset
from leantrain.errors import UsageError
from leantrain.models.common import info_int, require_task, token_length
from leantrain.models.decoding import GreedyDecoding, greedy_loop
from leantrain.models.registry import MODELS

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values: (N, heads, L, head_dim)


class Attention(nn.Module):
    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        return x.view(n, length, self.heads, d // self.heads).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> KV:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: torch.Tensor, kv: KV, mask: torch.Tensor | None) -> torch.Tensor:
        """``mask``: True where a query may attend, broadcastable to (N, heads, Lq, Lk)."""
        y = F.scaled_dot_product_attention(self._split(self.q(x)), *kv, attn_mask=mask)
        n, _, length, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(n, length, -1))


def _mlp(d_model: int, ff: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_model, ff), nn.GELU(), nn.Linear(ff, d_model))


class EncoderBlock(nn.Module):
    def __init__(self, d_model: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d_model), Attention(d_model, heads)
        self.norm2, self.mlp = nn.LayerNorm(d_model), _mlp(d_model, ff)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, self.attn.keys_values(h), mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class DecoderBlock(nn.Module):
    def __init__(self, d_model: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(d_model), Attention(d_model, heads)
        self.norm2, self.cross_attn = nn.LayerNorm(d_model), Attention(d_model, heads)
        self.norm3, self.mlp = nn.LayerNorm(d_model), _mlp(d_model, ff)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory_kv: KV, src_mask: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
        """Every target position at once (teacher forcing), ``causal`` masking the later ones."""
        h = self.norm1(x)
        x = x + self.drop(self.self_attn(h, self.self_attn.keys_values(h), causal))
        x = x + self.drop(self.cross_attn(self.norm2(x), memory_kv, src_mask))
        return x + self.drop(self.mlp(self.norm3(x)))

    def step(self, x: torch.Tensor, memory_kv: KV, src_mask: torch.Tensor, cache: KV, t: int) -> torch.Tensor:
        """One new position ``t`` (``x``: (N, 1, d)); ``cache`` holds the keys/values of positions before t in
        buffers of the whole decode's length (N, heads, steps, head_dim), and this writes position t's."""
        h = self.norm1(x)
        k, v = self.self_attn.keys_values(h)
        cache[0][:, :, t : t + 1] = k
        cache[1][:, :, t : t + 1] = v
        x = x + self.drop(self.self_attn(h, (cache[0][:, :, : t + 1], cache[1][:, :, : t + 1]), None))
        x = x + self.drop(self.cross_attn(self.norm2(x), memory_kv, src_mask))
        return x + self.drop(self.mlp(self.norm3(x)))


class Seq2SeqTransformer(GreedyDecoding, nn.Module):
    def __init__(
        self, vocab_size: int, *, src_len: int, tgt_len: int, d_model: int = 256, heads: int = 8,
        encoder_layers: int = 3, decoder_layers: int = 3, ff: int = 512, dropout: float = 0.0,
        pad_index: int = 0, eos_index: int = 2,
    ):
        super().__init__()
        self.pad_index, self.eos_index = pad_index, eos_index
        self.src_len, self.tgt_len = src_len, tgt_len
        self.d_model, self.ff = d_model, ff
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=pad_index)
        self.src_pos = nn.Parameter(torch.randn(src_len, d_model) * 0.02)
        self.tgt_pos = nn.Parameter(torch.randn(tgt_len, d_model) * 0.02)
        self.encoder = nn.ModuleList(EncoderBlock(d_model, heads, ff, dropout) for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(DecoderBlock(d_model, heads, ff, dropout) for _ in range(decoder_layers))
        self.encoder_norm, self.decoder_norm = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        # GPT-2's initialisation: small token and position embeddings of one scale. nn.Embedding's N(0, 1) would
        # drown the positions and, tied to the output layer, start with logits ~sqrt(d_model) too confident.
        with torch.no_grad():
            self.embedding.weight.normal_(0.0, 0.02)
            self.embedding.weight[pad_index].zero_()
        # The blocks take masks and caches besides the tensor, so none is a plain tensor -> tensor block to checkpoint.
        self.blocks = nn.ModuleList()
        self.decode_cache = True  # False: decode by recomputing the prefix each step (same tokens, slower)

    @property
    def padding_invariant(self) -> bool:
        """Whether a batch's outputs at its real tokens are the same at any padded width (``trim_padding`` relies on
        it): padding is masked everywhere, positions count from the start, and no dropout mask spans the width."""
        return self.drop.p == 0

    def encode(self, src: torch.Tensor) -> tuple[list[KV], torch.Tensor]:
        """Each decoder block's cross-attention keys/values of the source, and the source mask (N, 1, 1, S)."""
        mask = (src != self.pad_index)[:, None, None, :]
        x = self.drop(self.embedding(src) + self.src_pos[: src.shape[1]])
        for block in self.encoder:
            x = block(x, mask)
        memory = self.encoder_norm(x)
        return [cast(DecoderBlock, b).cross_attn.keys_values(memory) for b in self.decoder], mask

    def _decode(self, tokens: torch.Tensor, memory_kv: list[KV], mask: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.embedding(tokens) + self.tgt_pos[: tokens.shape[1]])
        for block, memory in zip(self.decoder, memory_kv):
            x = block(x, memory, mask, causal)
        return F.linear(self.decoder_norm(x), self.embedding.weight)

    def forward(
        self, src: torch.Tensor, tgt_in: torch.Tensor, decode: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        memory_kv, mask = self.encode(src)
        length = tgt_in.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=src.device).tril()
        logits = self._decode(tgt_in, memory_kv, mask, causal)
        if not decode:
            return logits
        bos, steps = tgt_in[:, 0], tgt_in.shape[1]
        if not self.decode_cache:
            return logits, self._recompute(src, bos, steps, early_exit=False)
        return logits, self.greedy(memory_kv, mask, bos, steps)

    def greedy(
        self, memory_kv: list[KV], mask: torch.Tensor, bos: torch.Tensor, steps: int, early_exit: bool = False
    ) -> torch.Tensor:
        """Greedy decode of ``steps`` tokens after ``bos`` with the key/value cache; pad after a sequence's EOS."""
        keys, _ = memory_kv[0]
        shape = (keys.shape[0], keys.shape[1], steps, keys.shape[3])
        caches = [(keys.new_empty(shape), keys.new_empty(shape)) for _ in self.decoder]

        def next_logits(token: torch.Tensor, t: int) -> torch.Tensor:
            x = self.drop(self.embedding(token[:, None]) + self.tgt_pos[t : t + 1])
            for block, memory, cache in zip(self.decoder, memory_kv, caches):
                x = cast(DecoderBlock, block).step(x, memory, mask, cache, t)
            return F.linear(self.decoder_norm(x[:, -1]), self.embedding.weight)

        return greedy_loop(next_logits, bos, steps, pad_index=self.pad_index, eos_index=self.eos_index,
                           early_exit=early_exit)

    def _decode_cached(self, src: torch.Tensor, bos: torch.Tensor, steps: int, early_exit: bool) -> torch.Tensor:
        memory_kv, mask = self.encode(src)
        return self.greedy(memory_kv, mask, bos, steps, early_exit)

    def flops_per_sample(self) -> float:
        """Forward FLOPs per target token (the task's unit), matrix multiplies only (2 per multiply-add): one
        decoder position (attending to half the target on average and to the whole source), plus the encoder's
        work and the cross-attention keys/values over the source, shared over the ``tgt_len - 1`` predicted
        tokens."""
        d, s, t = self.d_model, self.src_len, self.tgt_len
        ff, steps = self.ff, max(t - 1, 1)
        encoder_token = 2.0 * 4 * d * d + 2.0 * 2 * s * d + 2.0 * 2 * d * ff
        encoder = len(self.encoder) * s * encoder_token + len(self.decoder) * s * 2.0 * 2 * d * d  # + cross k, v
        decoder_token = 2.0 * 4 * d * d + 2.0 * 2 * (t / 2) * d  # self-attention
        decoder_token += 2.0 * 2 * d * d + 2.0 * 2 * s * d  # cross-attention: q and out, scores and mix
        decoder_token += 2.0 * 2 * d * ff
        vocab = self.embedding.num_embeddings
        return len(self.decoder) * decoder_token + 2.0 * d * vocab + encoder / steps


@MODELS.register(
    "seq2seq-transformer",
    "encoder-decoder transformer with a key/value-cached decoder; options d_model, heads, encoder_layers, "
    "decoder_layers, ff, dropout",
)
def seq2seq_transformer(
    data: Dataset, *, d_model: int = 256, heads: int = 8, encoder_layers: int = 3, decoder_layers: int = 3,
    ff: int = 512, dropout: float = 0.0, vocab_size: int = 0,
) -> Seq2SeqTransformer:
    require_task(data, "seq2seq", "seq2seq-transformer")
    if d_model % heads:
        raise UsageError(f"model 'seq2seq-transformer': d_model={d_model} must be a multiple of heads={heads}")
    if not 0 <= dropout < 1:
        raise UsageError(f"model 'seq2seq-transformer': dropout={dropout} must be in [0, 1)")
    return Seq2SeqTransformer(
        info_int(data, "vocab_size", "seq2seq-transformer", vocab_size), src_len=token_length(data, "seq2seq-transformer"),
        tgt_len=int(data.y_train.shape[1]), d_model=d_model, heads=heads, encoder_layers=encoder_layers,
        decoder_layers=decoder_layers, ff=ff, dropout=dropout,
        pad_index=int(data.info.get("pad_index", 0)), eos_index=int(data.info.get("eos_index", 2)),
    )
