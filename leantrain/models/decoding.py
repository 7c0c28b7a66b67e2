"""Greedy decoding, shared by the sequence-to-sequence models.

``greedy_loop`` is the one loop: pick the arg-max token, pad after a sequence's EOS (the pad is what the next
step sees), stop early on request. A cached decoder feeds it one new position per step; ``greedy_by_recompute``
(the reference the cached decoders must equal, and the seed's "no KV caching" arm) runs the model's whole
teacher-forced forward, encoder included, on the prefix decoded so far, so step t costs t decoder positions.
``GreedyDecoding`` gives a model ``generate`` with either, by its ``decode_cache`` switch, and beam search
(``beam_by_recompute``, for evaluation: it keeps the K most likely prefixes per source instead of one).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch


def greedy_loop(
    next_logits: Callable[[torch.Tensor, int], torch.Tensor], bos: torch.Tensor, steps: int,
    *, pad_index: int = 0, eos_index: int = 2, early_exit: bool = False,
) -> torch.Tensor:
    """Tokens after ``bos`` (N, steps). ``next_logits(token, t)`` gets step t's input token and returns the
    logits (N, vocab) of the position after it. ``early_exit`` stops once every sequence has ended (a host
    sync per step; cheap on CPU), returning fewer columns."""
    token, finished, out = bos, torch.zeros_like(bos, dtype=torch.bool), []
    for t in range(steps):
        token = next_logits(token, t).argmax(dim=-1).masked_fill(finished, pad_index)
        finished = finished | (token == eos_index)
        out.append(token)
        if early_exit and bool(finished.all()):
            break
    return torch.stack(out, dim=1)


@torch.no_grad()
def greedy_by_recompute(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], src: torch.Tensor, bos: torch.Tensor, steps: int,
    *, pad_index: int = 0, eos_index: int = 2, early_exit: bool = False,
) -> torch.Tensor:
    """``greedy_loop`` with no cache: every step re-runs ``forward(src, prefix)`` and keeps the last position."""
    prefix: list[torch.Tensor] = []

    def next_logits(token: torch.Tensor, t: int) -> torch.Tensor:
        prefix.append(token[:, None])
        return forward(src, torch.cat(prefix, dim=1))[:, -1]

    return greedy_loop(next_logits, bos, steps, pad_index=pad_index, eos_index=eos_index, early_exit=early_exit)


@torch.no_grad()
def beam_by_recompute(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], src: torch.Tensor, bos: torch.Tensor, steps: int,
    beam: int, *, pad_index: int = 0, eos_index: int = 2, early_exit: bool = False,
) -> torch.Tensor:
    """The most likely of ``beam`` hypotheses per source (sum of token log-probabilities; a hypothesis that has
    emitted EOS keeps its score and is padded), as (N, steps) tokens after ``bos``. Each step re-runs
    ``forward(src, prefix)`` on all N x beam prefixes: model-agnostic and exact, at the recompute's cost."""
    n = src.shape[0]
    rows = src.repeat_interleave(beam, dim=0)
    prefix = bos.repeat_interleave(beam)[:, None]
    # Only the first hypothesis of each source is live at the start, so the first step's K best differ.
    scores = torch.full((n, beam), -torch.inf, device=src.device)
    scores[:, 0] = 0.0
    finished = torch.zeros(n * beam, dtype=torch.bool, device=src.device)
    for _ in range(steps):
        logp = forward(rows, prefix)[:, -1].float().log_softmax(dim=-1)
        vocab = logp.shape[-1]
        ended = torch.full_like(logp, -torch.inf)
        ended[:, pad_index] = 0.0  # a finished hypothesis extends only by pad, at no cost
        logp = torch.where(finished[:, None], ended, logp)
        best, index = (scores.reshape(-1, 1) + logp).reshape(n, beam * vocab).topk(beam, dim=-1)
        parent = (index // vocab + torch.arange(n, device=src.device)[:, None] * beam).reshape(-1)
        token = (index % vocab).reshape(-1)
        prefix = torch.cat([prefix[parent], token[:, None]], dim=1)
        finished = finished[parent] | (token == eos_index)
        scores = best
        if early_exit and bool(finished.all()):
            break
    winner = scores.argmax(dim=-1) + torch.arange(n, device=src.device) * beam
    return prefix[winner, 1:]


class GreedyDecoding:
    """``generate`` for a model with ``decode_cache``, ``tgt_len``, pad/eos indices, a teacher-forced
    ``forward(src, tgt_in)`` and its own ``_decode_cached(src, bos, steps, early_exit)``."""

    decode_cache: bool
    tgt_len: int
    pad_index: int
    eos_index: int

    def _recompute(self, src: torch.Tensor, bos: torch.Tensor, steps: int, early_exit: bool) -> torch.Tensor:
        model = cast(Any, self)
        return greedy_by_recompute(lambda s, p: cast(torch.Tensor, model(s, p)), src, bos, steps,
                                   pad_index=self.pad_index, eos_index=self.eos_index, early_exit=early_exit)

    @torch.no_grad()
    def generate(
        self, src: torch.Tensor, bos_index: int = 1, steps: int | None = None, *, cache: bool | None = None,
        early_exit: bool = False, beam: int = 1,
    ) -> torch.Tensor:
        """Greedy tokens after BOS for a batch of sources; ``cache`` None follows ``self.decode_cache``.
        ``beam`` > 1: beam search instead (by recomputation, whatever the cache switch says)."""
        bos = torch.full((src.shape[0],), bos_index, dtype=torch.long, device=src.device)
        steps = steps or self.tgt_len - 1
        if beam > 1:
            model = cast(Any, self)
            return beam_by_recompute(lambda s, p: cast(torch.Tensor, model(s, p)), src, bos, steps, beam,
                                     pad_index=self.pad_index, eos_index=self.eos_index, early_exit=early_exit)
        if not (self.decode_cache if cache is None else cache):
            return self._recompute(src, bos, steps, early_exit)
        return cast(Any, self)._decode_cached(src, bos, steps, early_exit)  # each model's own cache
