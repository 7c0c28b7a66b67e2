"""Greedy decoding, shared by the sequence-to-sequence models.

``greedy_loop`` is the one loop: pick the arg-max token, pad after a sequence's EOS (the pad is what the next
step sees), stop early on request. A cached decoder feeds it one new position per step; ``greedy_by_recompute``
(the reference the cached decoders must equal, and the seed's "no KV caching" arm) runs the model's whole
teacher-forced forward, encoder included, on the prefix decoded so far, so step t costs t decoder positions.
``GreedyDecoding`` gives a model ``generate`` with either, by its ``decode_cache`` switch.
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
        early_exit: bool = False,
    ) -> torch.Tensor:
        """Greedy tokens after BOS for a batch of sources; ``cache`` None follows ``self.decode_cache``."""
        bos = torch.full((src.shape[0],), bos_index, dtype=torch.long, device=src.device)
        steps = steps or self.tgt_len - 1
        if not (self.decode_cache if cache is None else cache):
            return self._recompute(src, bos, steps, early_exit)
        return cast(Any, self)._decode_cached(src, bos, steps, early_exit)  # each model's own cache
