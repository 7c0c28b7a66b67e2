"""Text lines in and out of a saved seq2seq model: checks that name the file and line, and batched decoding.

A line's characters must be in the model's vocabulary and no longer than the length it was trained at; each
failure is one UsageError naming where. ``LineDecoder.predict`` encodes a batch of sources at the model's fixed
source length (the LSTM encoder's backward pass reads the padding, so the padding must be as in training),
decodes greedily (cached or not) or by beam search, and stops once every line of the batch has ended.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol, cast

import torch

from leantrain.data.polynomial import CharTokenizer
from leantrain.errors import UsageError
from leantrain.inference.model_file import SavedModel


class GreedyModel(Protocol):
    """What both seq2seq models offer for decoding (models/seq2seq.py, models/seq2seq_transformer.py)."""

    src_len: int
    tgt_len: int

    def generate(self, src: torch.Tensor, bos_index: int = 1, steps: int | None = None, *, cache: bool | None = None,
                 early_exit: bool = False, beam: int = 1) -> torch.Tensor: ...


class LineDecoder:
    def __init__(self, saved: SavedModel, *, cache: bool = True, batch_size: int = 512, beam: int = 1):
        if saved.task != "seq2seq" or not saved.vocab or not hasattr(saved.model, "generate"):
            raise UsageError(f"{saved.path}: model {saved.model_spec!r} (task {saved.task!r}) does not turn text lines "
                             "into text lines; evaluate and predict need a seq2seq model trained on text")
        if batch_size <= 0:
            raise UsageError(f"batch size must be a positive integer, got {batch_size}")
        if beam <= 0:
            raise UsageError(f"beam must be a positive integer (1: greedy), got {beam}")
        self.saved, self.model = saved, cast(GreedyModel, saved.model)
        self.tokenizer = CharTokenizer(saved.vocab)
        self.allowed = set(self.tokenizer.alphabet)
        self.max_source = self.model.src_len
        self.max_target = self.model.tgt_len - 2  # BOS, text, EOS
        self.cache, self.batch_size, self.beam = cache, batch_size, beam
        self.bos = int(saved.info.get("bos_index", 1))
        self.device = next(saved.model.parameters()).device

    def check(self, text: str, where: str, *, limit: int | None = None, side: str = "line") -> str:
        bad = sorted(set(text) - self.allowed)
        if bad:
            raise UsageError(f"{where}: {text[:60]!r}: characters {''.join(bad)!r} are outside the model's vocabulary "
                             f"{self.tokenizer.alphabet!r}")
        limit = self.max_source if limit is None else limit
        if len(text) > limit:
            raise UsageError(f"{where}: the {side} is {len(text)} characters, longer than the model's maximum of {limit}")
        return text

    @torch.inference_mode()
    def predict(self, sources: list[str]) -> list[str]:
        """Expansions in input order, ``batch_size`` lines per decode. Lines are batched by length (a longer
        source has a longer expansion), so a batch stops decoding soon after its own longest line ends."""
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        out = [""] * len(sources)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            src = self.tokenizer.encode([sources[i] for i in rows], self.max_source).to(self.device)
            tokens = self.model.generate(src, self.bos, cache=self.cache, early_exit=True, beam=self.beam)
            for i, ids in zip(rows, tokens.cpu(), strict=True):
                out[i] = self.tokenizer.decode(ids)
        return out


def numbered_lines(stream: Iterable[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(stream, start=1):
        yield number, line.rstrip("\r\n").strip()


def read_pairs(path: Path, decoder: LineDecoder) -> list[tuple[str, str]]:
    """``factored=expanded`` lines of a file, each checked against the model; blank lines are skipped."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file; expected lines like (7-3*z)*(-5*z-9)=15*z**2-8*z-63")
    pairs = []
    with path.open(encoding="ascii", errors="replace") as stream:
        for number, line in numbered_lines(stream):
            if not line:
                continue
            where = f"{path} line {number}"
            left, eq, right = line.partition("=")
            if not eq or not left or not right or "=" in right:
                raise UsageError(f"{where}: {line[:60]!r} is not FACTORED=EXPANDED")
            decoder.check(left, where, side="factored side")
            decoder.check(right, where, limit=decoder.max_target, side="expanded side")
            pairs.append((left, right))
    if not pairs:
        raise UsageError(f"{path} holds no lines; expected lines like (7-3*z)*(-5*z-9)=15*z**2-8*z-63")
    return pairs
