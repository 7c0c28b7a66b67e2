"""Text data sets: IMDB and WikiText-2 from their files, and synthetic stand-ins with the same shapes.

- Classification (IMDB): x (N, max_len) word ids padded with 0, y the sentiment; info vocab_size, pad_index.
- Language modelling (WikiText): x (N, seq_len) windows of the token stream, y the same windows one token on.

``imdb-sim`` reviews are Zipf-distributed filler words with a few sentiment words mixed in, mostly from their
class's set, plus label noise. ``wikitext-sim`` is a second-order Markov source: the previous token picks a set
of likely successors, the one before it re-ranks them, so a model with context beats a bigram model.
"""
from __future__ import annotations

import torch
from torch import Tensor

from leantrain.data import formats
from leantrain.data.dataset import Dataset, split_train_val
from leantrain.data.images import subsample
from leantrain.data.registry import DATASETS
from leantrain.data.tokenizers import WordVocabulary, encode_text, gpt2_encoding, words
from leantrain.errors import UsageError


def lm_windows(tokens: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping windows ``x[i] = tokens[i*L : (i+1)*L]`` and their next tokens ``y[i] = x[i]`` shifted by one."""
    if seq_len < 1:
        raise UsageError(f"seq_len={seq_len} must be at least 1")
    count = (len(tokens) - 1) // seq_len
    if count < 1:
        raise UsageError(f"a text of {len(tokens)} tokens is too short for one window of seq_len={seq_len}")
    x = tokens[: count * seq_len].view(count, seq_len)
    y = tokens[1 : count * seq_len + 1].view(count, seq_len)
    return x, y


@DATASETS.register("wikitext2", "WikiText-2 raw (path=FOLDER): real Wikipedia text, byte (or GPT-2) token windows")
def wikitext2(
    *, seed: int = 0, path: str = "", seq_len: int = 128, tokenizer: str = "bytes", n: int = 0, n_val: int = 0
) -> Dataset:
    if not path:
        raise UsageError("data set 'wikitext2' needs path=FOLDER holding wiki.*.raw; without files use wikitext-sim")
    if tokenizer not in ("bytes", "gpt2"):
        raise UsageError(f"tokenizer={tokenizer!r} is unknown; choose bytes or gpt2")
    if tokenizer == "gpt2":
        gpt2_encoding()  # fail before reading the files if the encoding is not available offline
    splits = formats.read_wikitext(path)
    train_ids, vocab_size = encode_text(splits["train"], tokenizer)
    val_ids, _ = encode_text(splits["valid"], tokenizer)
    x_train, y_train = subsample(*lm_windows(train_ids, seq_len), n, seed)
    x_val, y_val = subsample(*lm_windows(val_ids, seq_len), n_val, seed + 1)
    info = {"vocab_size": vocab_size, "tokenizer": tokenizer, "real": True}
    return Dataset("wikitext2", x_train, y_train, x_val, y_val, task="language-model", info=info)


@DATASETS.register("imdb", "IMDB reviews (path=FOLDER with aclImdb): 25,000 + 25,000 real reviews, 2 classes")
def imdb(
    *, seed: int = 0, path: str = "", vocab_size: int = 20_000, max_len: int = 256, n: int = 0, n_val: int = 0
) -> Dataset:
    if not path:
        raise UsageError("data set 'imdb' needs path=FOLDER holding aclImdb/; without files use imdb-sim")
    splits = formats.read_aclimdb(path)
    train_words = [words(t) for t in splits["train"][0]]
    vocabulary = WordVocabulary(train_words, vocab_size)  # from the training reviews only
    x_train = vocabulary.encode(train_words, max_len)
    x_val = vocabulary.encode([words(t) for t in splits["test"][0]], max_len)
    x_train, y_train = subsample(x_train, torch.tensor(splits["train"][1]), n, seed)
    x_val, y_val = subsample(x_val, torch.tensor(splits["test"][1]), n_val, seed + 1)
    info = {"vocab_size": len(vocabulary), "pad_index": WordVocabulary.PAD, "real": True}
    return Dataset("imdb", x_train, y_train, x_val, y_val, num_classes=2, info=info)


def synthetic_reviews(
    n: int, vocab_size: int, max_len: int, *, seed: int, sentiment_words: int, sentiment_rate: float,
    label_noise: float,
) -> tuple[Tensor, Tensor]:
    """(N, max_len) ids (0 pads, ids from 2) and labels; see the module docstring."""
    gen = torch.Generator().manual_seed(seed)
    filler = 1.0 / (torch.arange(vocab_size - 2) + 10.0)  # Zipf-like word frequencies
    x = torch.multinomial(filler, n * max_len, replacement=True, generator=gen).view(n, max_len) + 2
    polar = (torch.randperm(vocab_size - 202, generator=gen)[: 2 * sentiment_words] + 200).view(2, sentiment_words)
    y = torch.randint(0, 2, (n,), generator=gen)
    is_sentiment = torch.rand(n, max_len, generator=gen) < sentiment_rate
    own_class = torch.rand(n, max_len, generator=gen) < 0.8  # a fifth of sentiment words point the other way
    side = torch.where(own_class, y[:, None], 1 - y[:, None])
    pick = torch.randint(0, sentiment_words, (n, max_len), generator=gen)
    x = torch.where(is_sentiment, polar[side, pick], x)
    lengths = torch.randint(max_len // 4, max_len + 1, (n,), generator=gen)
    x[torch.arange(max_len)[None, :] >= lengths[:, None]] = 0
    flip = torch.rand(n, generator=gen) < label_noise
    return x, torch.where(flip, 1 - y, y)


@DATASETS.register("imdb-sim", "IMDB stand-in: 5,000 synthetic reviews of up to 128 word ids (vocab 2,000), 2 classes")
def imdb_sim(
    *, seed: int = 0, n: int = 5_000, vocab_size: int = 2_000, max_len: int = 128, sentiment_words: int = 50,
    sentiment_rate: float = 0.08, label_noise: float = 0.05, val_fraction: float = 0.2,
) -> Dataset:
    if vocab_size < 202 + 2 * sentiment_words:
        raise UsageError(f"imdb-sim: vocab_size={vocab_size} must be at least {202 + 2 * sentiment_words}")
    x, y = synthetic_reviews(
        n, vocab_size, max_len, seed=seed * 1_000_003 + 7, sentiment_words=sentiment_words,
        sentiment_rate=sentiment_rate, label_noise=label_noise,
    )
    info = {"vocab_size": vocab_size, "pad_index": 0}
    return Dataset("imdb-sim", *split_train_val(x, y, val_fraction, seed), num_classes=2, info=info)


def markov_stream(n_tokens: int, vocab_size: int, *, seed: int, branching: int, smoothing: float) -> Tensor:
    """A token stream where ``next`` depends on the last two tokens; see the module docstring."""
    gen = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, vocab_size, (vocab_size, branching), generator=gen).tolist()
    rotation = torch.randint(0, branching, (vocab_size,), generator=gen).tolist()
    rank_weights = 1.0 / (torch.arange(branching) + 1.0) ** 1.5
    ranks = torch.multinomial(rank_weights, n_tokens, replacement=True, generator=gen).tolist()
    uniform = torch.randint(0, vocab_size, (n_tokens,), generator=gen).tolist()
    smooth = (torch.rand(n_tokens, generator=gen) < smoothing).tolist()
    stream, before, last = [0] * n_tokens, 0, 0
    for i in range(n_tokens):  # plain Python lists: ~0.2 s per million tokens
        token = uniform[i] if smooth[i] else successors[last][(ranks[i] + rotation[before]) % branching]
        stream[i], before, last = token, last, token
    return torch.tensor(stream, dtype=torch.long)


@DATASETS.register("wikitext-sim", "WikiText stand-in: 200,000 tokens (vocab 256), 2nd-order Markov, windows of 64")
def wikitext_sim(
    *, seed: int = 0, n_tokens: int = 200_000, vocab_size: int = 256, seq_len: int = 64, branching: int = 8,
    smoothing: float = 0.02, val_fraction: float = 0.2,
) -> Dataset:
    stream = markov_stream(n_tokens, vocab_size, seed=seed * 1_000_003 + 11, branching=branching, smoothing=smoothing)
    # Validation is the end of the stream (as WikiText's own split is a later text), not shuffled windows.
    cut = int(len(stream) * (1 - val_fraction))
    x_train, y_train = lm_windows(stream[:cut], seq_len)
    x_val, y_val = lm_windows(stream[cut:], seq_len)
    info = {"vocab_size": vocab_size, "tokenizer": "synthetic"}
    return Dataset("wikitext-sim", x_train, y_train, x_val, y_val, task="language-model", info=info)
