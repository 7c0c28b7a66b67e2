"""Tokenizers for the text sets: bytes (always available), GPT-2 BPE (only if tiktoken has it offline), words.

Byte-level tokens need no vocabulary file: 256 ids, every text encodes, nothing to download. GPT-2 BPE is the
tokenizer of the seeds' GPT-2 runs; tiktoken fetches its two files from the network on first use, so leantrain
uses it only when tiktoken is installed and those files are already in tiktoken's cache.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from leantrain.errors import UsageError

BYTE_VOCAB_SIZE = 256
GPT2_VOCAB_SIZE = 50_257
_GPT2_FILES = [
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
]


def byte_tokens(data: bytes) -> Tensor:
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).astype(np.int64))


def _tiktoken_cache_dir() -> Path:
    # Where tiktoken looks before it downloads (tiktoken/load.py: read_file_cached).
    env = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / "data-gym-cache"


def gpt2_encoding() -> Any:
    """tiktoken's GPT-2 encoding, or UsageError if it would need the network."""
    try:
        import tiktoken
    except ImportError:
        raise UsageError("tokenizer=gpt2 needs the tiktoken package (pip install tiktoken), or use bytes") from None
    cache = _tiktoken_cache_dir()
    missing = [u for u in _GPT2_FILES if not (cache / hashlib.sha1(u.encode()).hexdigest()).is_file()]
    if missing:
        raise UsageError(
            f"tokenizer=gpt2: tiktoken's GPT-2 files are not in its cache {cache} and leantrain never downloads; "
            "run tiktoken.get_encoding('gpt2') once online, or use tokenizer=bytes"
        )
    return tiktoken.get_encoding("gpt2")


def encode_text(data: bytes, tokenizer: str) -> tuple[Tensor, int]:
    """Token ids of a UTF-8 text and the vocabulary size."""
    if tokenizer == "bytes":
        return byte_tokens(data), BYTE_VOCAB_SIZE
    if tokenizer == "gpt2":
        ids = gpt2_encoding().encode_ordinary(data.decode("utf-8"))
        return torch.tensor(ids, dtype=torch.long), GPT2_VOCAB_SIZE
    raise UsageError(f"tokenizer={tokenizer!r} is unknown; choose bytes or gpt2")


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[!?]")


def words(text: str) -> list[str]:
    """Lower-case words (with their apostrophe suffixes) and ! ?; IMDB's ``<br />`` line breaks are dropped."""
    return _WORD.findall(text.lower().replace("<br />", " "))


class WordVocabulary:
    """The ``size - 2`` most frequent words of the training texts; id 0 pads, id 1 is any other word."""

    PAD, UNKNOWN = 0, 1

    def __init__(self, texts: list[list[str]], size: int):
        counts = Counter(w for text in texts for w in text)
        # Ties in frequency are broken by the word itself, so the vocabulary does not depend on file order.
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[: max(size - 2, 0)]
        self.words = ["<pad>", "<unk>"] + [w for w, _ in ranked]
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, texts: list[list[str]], max_len: int) -> Tensor:
        """(N, max_len) ids: each text's first ``max_len`` words, padded with 0."""
        out = torch.zeros(len(texts), max_len, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.index.get(w, self.UNKNOWN) for w in text[:max_len]]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out
