"""Seed 004's polynomial-expansion task: lines ``factors=expansion`` such as ``(7-3*z)*(-5*z-9)=15*z**2-8*z-63``.

The generator follows the distribution measured on 200,000 real lines (``../shared/data/polynomial/README.md``,
relative to the repository): the product of two linear factors ``a*t + b`` in one variable ``t``, which is one of 13
letters (``i``, ``n``, ``s`` twice as likely as the others) or, in about 1% of lines each, ``sin(v)``, ``cos(v)`` or
``tan(v)``; each factor is a bare term (``b = 0``) with probability 0.2; ``a`` is 1 with probability 0.2, else
uniform over -9..8 without 0; ``b`` is uniform over -32..31 without 0. Both sides are sympy's ``str()`` with spaces
removed.

sympy takes ~1 ms a line, so lines are written by ``format_line``, which applies sympy's printing rules for these
forms (term order, factor order, ``**2`` for a repeated factor); ``sympy_line`` is the reference it must equal,
checked in tests on random lines and on the real file, and selectable with ``engine="sympy"``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from leantrain.data.dataset import Dataset, split_train_val
from leantrain.data.registry import DATASETS
from leantrain.errors import UsageError

VARIABLES = "achijknostxyz"
VARIABLE_WEIGHTS = [2 if v in "ins" else 1 for v in VARIABLES]
WRAPS = ("sin", "cos", "tan")
WRAP_PROBABILITY = 0.01  # each of sin, cos, tan
BARE_PROBABILITY = 0.2
A_ONE_PROBABILITY = 0.2
A_VALUES = [k for k in range(-9, 9) if k]
B_VALUES = [k for k in range(-32, 32) if k]
MAX_LEN = 29  # the task's MAX_SEQUENCE_LENGTH, per side


@dataclass(frozen=True)
class Factors:
    """``(a1*t + b1)*(a2*t + b2)`` with ``t`` = ``variable`` or ``wrap(variable)``."""

    variable: str
    wrap: str  # "", "sin", "cos" or "tan"
    a1: int
    b1: int
    a2: int
    b2: int

    @property
    def term(self) -> str:
        return f"{self.wrap}({self.variable})" if self.wrap else self.variable


def sample_factors(rng: random.Random) -> Factors:
    variable = rng.choices(VARIABLES, VARIABLE_WEIGHTS)[0]
    u = rng.random()
    wrap = WRAPS[int(u / WRAP_PROBABILITY)] if u < WRAP_PROBABILITY * len(WRAPS) else ""

    def linear() -> tuple[int, int]:
        a = 1 if rng.random() < A_ONE_PROBABILITY else rng.choice(A_VALUES)
        b = 0 if rng.random() < BARE_PROBABILITY else rng.choice(B_VALUES)
        return a, b

    (a1, b1), (a2, b2) = linear(), linear()
    return Factors(variable, wrap, a1, b1, a2, b2)


# --- sympy's str() for these forms ------------------------------------------------------------------------------

def _monomial(coefficient: int, power: int, t: str) -> str:
    if power == 0:
        return str(coefficient)
    body = t if power == 1 else f"{t}**{power}"
    return body if coefficient == 1 else "-" + body if coefficient == -1 else f"{coefficient}*{body}"


def _join(terms: list[str]) -> str:
    return terms[0] + "".join(s if s.startswith("-") else "+" + s for s in terms[1:])


def format_polynomial(coefficients: list[int], t: str) -> str:
    """``c[0] + c[1]*t + c[2]*t**2 ...`` as sympy prints it: highest power first, except that a two-term sum
    of a negative term and a positive constant puts the constant first (``7 - 3*z``, ``4 - z**2``)."""
    terms = [(c, p) for p, c in reversed(list(enumerate(coefficients))) if c]
    if not terms:
        return "0"
    if len(terms) == 2 and terms[0][0] < 0 and terms[1][1] == 0 and terms[1][0] > 0:
        terms.reverse()
    return _join([_monomial(c, p, t) for c, p in terms])


def _add_sort_key(a: int, b: int) -> tuple[int, int, int]:
    # sympy orders a Mul's Add factors by their printed terms: a leading number sorts before a leading t-term,
    # then by the leading term's coefficient, then by the second term's.
    return (0, b, a) if a < 0 < b else (1, a, b)


def format_factored(f: Factors) -> str:
    t, trig = f.term, bool(f.wrap)
    if f.b1 == 0 and f.b2 == 0:
        return _monomial(f.a1 * f.a2, 2, t)
    if f.b1 and f.b2:
        first, second = sorted([(f.a1, f.b1), (f.a2, f.b2)], key=lambda ab: _add_sort_key(*ab))
        if first == second:
            return f"({format_polynomial([first[1], first[0]], t)})**2"
        return f"({format_polynomial([first[1], first[0]], t)})*({format_polynomial([second[1], second[0]], t)})"
    (coefficient, _), (a, b) = sorted([(f.a1, f.b1), (f.a2, f.b2)], key=lambda ab: ab[1] != 0)
    add = f"({format_polynomial([b, a], t)})"
    # A symbol sorts before an Add in a Mul, a function (sin, cos, tan) after it.
    body = f"{add}*{t}" if trig else f"{t}*{add}"
    return body if coefficient == 1 else "-" + body if coefficient == -1 else f"{coefficient}*{body}"


def format_expansion(f: Factors) -> str:
    return format_polynomial([f.b1 * f.b2, f.a1 * f.b2 + f.a2 * f.b1, f.a1 * f.a2], f.term)


def format_line(f: Factors) -> str:
    return f"{format_factored(f)}={format_expansion(f)}"


def sympy_line(f: Factors) -> str:
    """The reference: build the product with sympy and print both sides, as the task's own data was made."""
    import sympy

    symbol = sympy.Symbol(f.variable)
    t = getattr(sympy, f.wrap)(symbol) if f.wrap else symbol
    product = (f.a1 * t + f.b1) * (f.a2 * t + f.b2)
    return str(product).replace(" ", "") + "=" + str(sympy.expand(product)).replace(" ", "")


def generate_lines(n: int, *, seed: int = 0, max_len: int = MAX_LEN, engine: str = "fast") -> list[str]:
    """``n`` lines, deterministic by seed; lines with a side longer than ``max_len`` are drawn again."""
    if engine not in ("fast", "sympy"):
        raise UsageError(f"polynomial engine {engine!r} is unknown; choose fast or sympy")
    write = format_line if engine == "fast" else sympy_line
    rng = random.Random(f"polynomial-{seed}")
    lines: list[str] = []
    while len(lines) < n:
        line = write(sample_factors(rng))
        left, _, right = line.partition("=")
        if len(left) <= max_len and len(right) <= max_len:
            lines.append(line)
    return lines


def expand_with_sympy(factored: str) -> str:
    """sympy's expansion of a factored side, spaces removed (for checking lines from any source)."""
    import sympy

    return str(sympy.expand(sympy.sympify(factored))).replace(" ", "")


# --- tokens, files, scoring, the registered data set --------------------------------------------------------------

PAD, BOS, EOS = 0, 1, 2
ALPHABET = "()*+-0123456789" + VARIABLES  # every character of both sides (sin, cos, tan use these letters)
VOCAB = ["<pad>", "<bos>", "<eos>", *ALPHABET]


class CharTokenizer:
    """One id per character; 0 pads, 1 and 2 start and end a target. ``vocab``: a saved model's own list."""

    def __init__(self, vocab: list[str] | None = None) -> None:
        self.vocab = list(vocab or VOCAB)
        self.lookup = np.full(256, -1, dtype=np.int64)
        self.lookup[0] = PAD  # the padding byte written by ``encode``
        for i, ch in enumerate(self.vocab[3:], start=3):
            self.lookup[ord(ch)] = i

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def alphabet(self) -> str:
        return "".join(self.vocab[3:])

    def encode(self, texts: list[str], length: int, *, bos_eos: bool = False) -> Tensor:
        """(N, length) ids, padded with 0; with ``bos_eos`` each row is BOS, the text, EOS (length + 2 wide)."""
        raw = np.frombuffer(b"".join(t.encode("ascii").ljust(length, b"\0") for t in texts), dtype=np.uint8)
        ids = torch.from_numpy(self.lookup[raw.reshape(len(texts), length)])
        if not bos_eos:
            return ids
        out = torch.zeros(len(texts), length + 2, dtype=torch.long)
        out[:, 0], out[:, 1:-1] = BOS, ids
        out[torch.arange(len(texts)), torch.tensor([len(t) for t in texts]) + 1] = EOS
        return out

    def decode(self, ids: Tensor | list[int]) -> str:
        """The characters up to the first EOS; BOS and padding are skipped."""
        chars = []
        for i in ids.tolist() if isinstance(ids, Tensor) else ids:
            if i == EOS:
                break
            if i > EOS:
                chars.append(self.vocab[i])
        return "".join(chars)


def read_lines(path: str | Path, max_len: int = MAX_LEN) -> list[str]:
    """A user's ``train.txt``: one ``factors=expansion`` line each, in the task's alphabet, sides <= max_len."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"polynomial file {file} does not exist; expected lines like (7-3*z)*(-5*z-9)=15*z**2-8*z-63")
    allowed = set(ALPHABET)
    lines = []
    for number, line in enumerate(file.read_text(errors="replace").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        left, eq, right = line.partition("=")
        bad = sorted(set(left + right) - allowed)
        if not eq or "=" in right or not left or not right or bad:
            what = f"characters {''.join(bad)!r} outside {ALPHABET!r}" if bad else "not FACTORS=EXPANSION"
            raise UsageError(f"{file} line {number}: {line[:60]!r}: {what}")
        if max(len(left), len(right)) > max_len:
            raise UsageError(f"{file} line {number}: a side is longer than max_len={max_len}; raise max_len")
        lines.append(line)
    if not lines:
        raise UsageError(f"{file} holds no lines; expected lines like (7-3*z)*(-5*z-9)=15*z**2-8*z-63")
    return lines


def exact_match(predicted: list[str], expected: list[str]) -> float:
    """The task's score: the share of expansions predicted character for character."""
    return sum(p == e for p, e in zip(predicted, expected, strict=True)) / max(len(expected), 1)


def exact_match_ids(predicted: Tensor, target: Tensor) -> Tensor:
    """Per row, whether two id sequences agree up to and including the target's EOS (a leading BOS in either
    is ignored; what follows EOS is not compared). Rows of different widths are padded to compare."""

    def normalise(ids: Tensor) -> Tensor:
        ids = ids[:, 1:] if len(ids) and bool((ids[:, 0] == BOS).all()) else ids
        after_eos = (ids == EOS).long().cumsum(dim=1) - (ids == EOS).long() > 0
        return ids.masked_fill(after_eos, PAD)

    p, t = normalise(predicted), normalise(target)
    width = max(p.shape[1], t.shape[1])
    p, t = (torch.nn.functional.pad(a, (0, width - a.shape[1]), value=PAD) for a in (p, t))
    return (p == t).all(dim=1)


@DATASETS.register("polynomial", "polynomial expansion (seed 004): 20,000 generated lines, or path=train.txt; seq2seq")
def polynomial(
    *, seed: int = 0, n: int = 20_000, path: str = "", max_len: int = MAX_LEN, val_fraction: float = 0.2,
    engine: str = "fast",
) -> Dataset:
    """x: factored side (N, max_len); y: BOS expansion EOS (N, max_len + 2); a file's lines are a seeded n of them
    (n=0: all)."""
    if path:
        lines = read_lines(path, max_len)
        if 0 < n < len(lines):
            keep = torch.randperm(len(lines), generator=torch.Generator().manual_seed(seed))[:n].tolist()
            lines = [lines[i] for i in sorted(keep)]
    else:
        lines = generate_lines(n, seed=seed, max_len=max_len, engine=engine)
    tokenizer = CharTokenizer()
    sides = [line.partition("=") for line in lines]
    x = tokenizer.encode([left for left, _, _ in sides], max_len)
    y = tokenizer.encode([right for _, _, right in sides], max_len, bos_eos=True)
    info = {
        "vocab_size": tokenizer.vocab_size, "pad_index": PAD, "bos_index": BOS, "eos_index": EOS,
        "max_target_len": max_len + 2, "vocab": list(VOCAB), "real": bool(path),
    }
    return Dataset("polynomial", *split_train_val(x, y, val_fraction, seed), task="seq2seq", info=info)
