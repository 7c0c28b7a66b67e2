"""Seed 004's LSTM seq2seq with attention (after aladdinpersson's Seq2Seq_attention): a bidirectional LSTM
encoder; a decoder that, each step, scores every encoder state against its hidden state
(relu(Linear([h; e_s])), softmax over the source), forms the context by einsum, concatenates it with
the target embedding, runs an LSTM step, and projects to the vocabulary.

Training is teacher-forced: ``model(src, tgt_in)`` -> logits (N, T, vocab). With ``decode=True`` it also
returns a greedy decode of T tokens, batched, with the encoder run once and the decoder advanced one
step at a time carrying its (h, c) state: for an LSTM that state is the whole cache. The source half of
the attention score is also computed once per sequence, not once per step. ``decode_cache = False`` (the
``decode_cache`` technique, the seed's "no KV caching" arm) decodes by re-running the whole model on the prefix
instead (``models/decoding.py``); the tokens are the same.
"""
from __future__ import annotations

from typing import cast

import torch
from torch import nn

from leantrain.data.dataset import Dataset
from leantrain.models.common import info_int, require_task, token_length
from leantrain.models.decoding import GreedyDecoding, greedy_loop
from leantrain.models.registry import MODELS

State = list[tuple[torch.Tensor, torch.Tensor]]  # (h, c) per decoder layer
Memory = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # encoder states, their score half, source mask


class Seq2Seq(GreedyDecoding, nn.Module):
    def __init__(
        self, vocab_size: int, *, src_len: int, tgt_len: int, emb: int = 128, hidden: int = 256, num_layers: int = 1,
        pad_index: int = 0, eos_index: int = 2,
    ):
        super().__init__()
        self.pad_index, self.eos_index = pad_index, eos_index
        self.src_len, self.tgt_len = src_len, tgt_len  # for FLOPs per target token
        self.src_embedding = nn.Embedding(vocab_size, emb, padding_idx=pad_index)
        self.encoder = nn.LSTM(emb, hidden, num_layers, batch_first=True, bidirectional=True)
        self.bridge_h = nn.Linear(2 * hidden, hidden)  # both directions' final states -> decoder's first state
        self.bridge_c = nn.Linear(2 * hidden, hidden)
        self.tgt_embedding = nn.Embedding(vocab_size, emb, padding_idx=pad_index)
        # Linear([h; e_s]) -> 1, split into its h and e_s halves so the e_s half is computed once per sequence.
        self.score_h = nn.Linear(hidden, 1, bias=False)
        self.score_e = nn.Linear(2 * hidden, 1)
        self.cells = nn.ModuleList(
            nn.LSTMCell((2 * hidden + emb) if layer == 0 else hidden, hidden) for layer in range(num_layers)
        )
        self.fc = nn.Linear(hidden, vocab_size)
        # No run of identical tensor -> tensor blocks (the decoder is a loop over time): nothing to checkpoint.
        self.blocks = nn.ModuleList()
        self.decode_cache = True  # False: decode by recomputing the prefix each step (same tokens, slower)

    def encode(self, src: torch.Tensor) -> tuple[Memory, State]:
        states, (h_n, c_n) = self.encoder(self.src_embedding(src))
        layers = len(self.cells)

        def bridge(final: torch.Tensor, linear: nn.Linear) -> list[torch.Tensor]:
            both = final.view(layers, 2, *final.shape[1:])  # (layer, direction, N, H)
            return list(linear(torch.cat([both[:, 0], both[:, 1]], dim=-1)).unbind(0))

        state = list(zip(bridge(h_n, self.bridge_h), bridge(c_n, self.bridge_c), strict=True))
        memory = (states, self.score_e(states).squeeze(-1), src != self.pad_index)
        return memory, state

    def step(
        self, token: torch.Tensor, state: State, memory: Memory
    ) -> tuple[torch.Tensor, State]:
        """One decoder step for a batch: token ids (N,) -> logits (N, vocab) and the next state."""
        states, score_e, mask = memory
        scores = torch.relu(score_e + self.score_h(state[-1][0]))  # (N, S)
        attention = scores.masked_fill(~mask, float("-inf")).softmax(dim=1)
        context = torch.einsum("ns,nsk->nk", attention.to(states.dtype), states)
        x = torch.cat([context, self.tgt_embedding(token)], dim=-1)
        new_state = []
        for cell, (h, c) in zip(self.cells, state, strict=True):
            h, c = cell(x, (h, c))
            new_state.append((h, c))
            x = h
        return self.fc(x), new_state

    def forward(
        self, src: torch.Tensor, tgt_in: torch.Tensor, decode: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        memory, first_state = self.encode(src)
        state, logits = first_state, []
        for t in range(tgt_in.shape[1]):  # teacher forcing: the true previous token feeds each step
            step_logits, state = self.step(tgt_in[:, t], state, memory)
            logits.append(step_logits)
        teacher_forced = torch.stack(logits, dim=1)
        if not decode:
            return teacher_forced
        if not self.decode_cache:
            return teacher_forced, self._recompute(src, tgt_in[:, 0], tgt_in.shape[1], early_exit=False)
        return teacher_forced, self.greedy(memory, first_state, tgt_in[:, 0], tgt_in.shape[1])

    def greedy(
        self, memory: Memory, state: State, bos: torch.Tensor, steps: int, early_exit: bool = False
    ) -> torch.Tensor:
        """Greedy decode of ``steps`` tokens after ``bos``, carrying the decoder's (h, c) state: for an LSTM that
        state is the whole cache. Positions after a sequence's EOS hold pad. ``early_exit``: see greedy_loop."""
        carried = [state]

        def next_logits(token: torch.Tensor, t: int) -> torch.Tensor:
            logits, carried[0] = self.step(token, carried[0], memory)
            return logits

        return greedy_loop(next_logits, bos, steps, pad_index=self.pad_index, eos_index=self.eos_index,
                           early_exit=early_exit)

    def _decode_cached(self, src: torch.Tensor, bos: torch.Tensor, steps: int, early_exit: bool) -> torch.Tensor:
        memory, state = self.encode(src)
        return self.greedy(memory, state, bos, steps, early_exit)

    def flops_per_sample(self) -> float:
        """Forward FLOPs per target token (the task's unit): one decoder step, plus the encoder's work
        for the whole source shared over the target's ``tgt_len - 1`` predicted tokens. Matrix multiplies
        only (2 per multiply-add); gates' elementwise work left out. The task counts non-pad target tokens,
        so utilisation from it is useful work: steps spent on padding count as waste."""
        hidden, emb = self.bridge_h.out_features, self.src_embedding.embedding_dim
        layers, src, steps = len(self.cells), self.src_len, max(self.tgt_len - 1, 1)
        encoder = 0.0
        for layer in range(layers):
            width_in = emb if layer == 0 else 2 * hidden
            encoder += 2 * src * 2.0 * 4 * hidden * (width_in + hidden)  # two directions, four gates
        encoder += 2 * layers * 2.0 * 2 * hidden * hidden + src * 2.0 * 2 * hidden  # bridges, score_e
        decoder = 2.0 * hidden + src * 2.0 * 2 * hidden  # score_h, context einsum
        decoder += sum(2.0 * 4 * hidden * (cell.input_size + hidden) for cell in cast(list[nn.LSTMCell], list(self.cells)))
        decoder += 2.0 * hidden * self.fc.out_features
        return decoder + encoder / steps


@MODELS.register("seq2seq", "seed 004's LSTM encoder-decoder with attention; options emb, hidden, num_layers")
def seq2seq(data: Dataset, *, emb: int = 128, hidden: int = 256, num_layers: int = 1, vocab_size: int = 0) -> Seq2Seq:
    require_task(data, "seq2seq", "seq2seq")
    return Seq2Seq(
        info_int(data, "vocab_size", "seq2seq", vocab_size), src_len=token_length(data, "seq2seq"),
        tgt_len=int(data.y_train.shape[1]), emb=emb, hidden=hidden, num_layers=num_layers,
        pad_index=int(data.info.get("pad_index", 0)), eos_index=int(data.info.get("eos_index", 2)),
    )
