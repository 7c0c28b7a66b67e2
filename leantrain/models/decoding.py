"""Greedy decoding without a cache: the reference the cached decoders must equal, and the seed's "no KV
caching" arm. Each step runs the model's whole teacher-forced forward (encoder included) on the prefix decoded
so far and keeps only the last position's logits, so step t costs t decoder positions instead of one."""
from __future__ import annotations

from collections.abc import Callable

import torch


@torch.no_grad()
def greedy_by_recompute(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], src: torch.Tensor, bos: torch.Tensor, steps: int,
    *, pad_index: int = 0, eos_index: int = 2, early_exit: bool = False,
) -> torch.Tensor:
    """Tokens after ``bos`` (N, steps); positions after a sequence's EOS hold pad, and the pad is what the next
    step sees (as in the cached decoders), so both produce the same sequences. ``early_exit`` stops once every
    sequence has ended (a host sync per step; cheap on CPU), returning fewer columns."""
    prefix = bos[:, None]
    finished = torch.zeros_like(bos, dtype=torch.bool)
    for _ in range(steps):
        token = forward(src, prefix)[:, -1].argmax(dim=-1).masked_fill(finished, pad_index)
        finished = finished | (token == eos_index)
        prefix = torch.cat([prefix, token[:, None]], dim=1)
        if early_exit and bool(finished.all()):
            break
    return prefix[:, 1:]
