"""``leantrain evaluate``: a saved model's exact match on lines it never trained on, broken down by target
length and by line kind, with every mistake written out for inspection.

Exact match is the task's score: the expanded side predicted character for character. Token accuracy is over
the target's characters and its end: position i is right when the prediction has the same character there
(so a missing or extra character counts once at the end, and shifts count at every later position).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from leantrain.data.polynomial import WRAPS, generate_lines
from leantrain.errors import UsageError
from leantrain.inference.lines import LineDecoder, read_pairs
from leantrain.registry import parse_spec

LENGTH_BUCKETS = ((1, 5), (6, 10), (11, 15), (16, 20), (21, 25))  # characters of the expanded side; then 26+
EVAL_SEED = 1_000_003  # generated evaluation lines: a stream other than the training data's (seed 0, 1, ...)


@dataclass
class Tally:
    lines: int = 0
    exact: int = 0

    def add(self, right: bool) -> None:
        self.lines += 1
        self.exact += right

    @property
    def exact_match(self) -> float:
        return self.exact / max(self.lines, 1)


@dataclass
class Evaluation:
    overall: Tally = field(default_factory=Tally)
    positions: int = 0
    positions_right: int = 0
    by_length: dict[str, Tally] = field(default_factory=dict)
    by_kind: dict[str, Tally] = field(default_factory=dict)
    mistakes: list[tuple[str, str, str]] = field(default_factory=list)  # factored, expected, predicted
    seconds: float = 0.0

    @property
    def token_accuracy(self) -> float:
        return self.positions_right / max(self.positions, 1)


def line_kind(factored: str) -> str:
    """The data README's two kinds: a bare variable, or one wrapped in sin/cos/tan."""
    return "trig" if any(f"{w}(" in factored for w in WRAPS) else "bare"


def length_bucket(n: int) -> str:
    for low, high in LENGTH_BUCKETS:
        if n <= high:
            return f"{low}-{high}"
    return f"{LENGTH_BUCKETS[-1][1] + 1}+"


def score(pairs: list[tuple[str, str]], predicted: list[str]) -> Evaluation:
    ev = Evaluation()
    for (factored, expected), guess in zip(pairs, predicted, strict=True):
        right = guess == expected
        ev.overall.add(right)
        ev.by_length.setdefault(length_bucket(len(expected)), Tally()).add(right)
        ev.by_kind.setdefault(line_kind(factored), Tally()).add(right)
        # Each character of the target and its end; "\0" stands for the end of either string.
        ev.positions += len(expected) + 1
        ev.positions_right += sum(a == b for a, b in zip(expected + "\0", guess + "\0"))
        if not right:
            ev.mistakes.append((factored, expected, guess))
    ev.by_length = dict(sorted(ev.by_length.items(), key=lambda kv: int(kv[0].split("-")[0].rstrip("+"))))
    return ev


def evaluation_lines(spec: str, decoder: LineDecoder) -> list[tuple[str, str]]:
    """``polynomial-file:path=F`` (or ``polynomial:path=F``): every line of F; ``polynomial:n=N[,seed=S]``:
    N generated lines from a seed other than training's."""
    name, options = parse_spec(spec)
    if name not in ("polynomial", "polynomial-file"):
        raise UsageError(f"--data {spec!r}: evaluate reads polynomial-file:path=FILE or polynomial:n=N[,seed=S]")
    unknown = set(options) - ({"path"} if name == "polynomial-file" else {"path", "n", "seed"})
    if unknown or (name == "polynomial-file" and "path" not in options):
        raise UsageError(f"--data {spec!r}: options are path=FILE (polynomial-file) or n=N,seed=S (polynomial)")
    if "path" in options:
        return read_pairs(Path(options["path"]), decoder)
    try:
        n, seed = int(options.get("n", "10000")), int(options.get("seed", str(EVAL_SEED)))
    except ValueError:
        raise UsageError(f"--data {spec!r}: n and seed must be integers") from None
    return [(left, right) for left, _, right in (line.partition("=") for line in
            generate_lines(n, seed=seed, max_len=min(decoder.max_source, decoder.max_target)))]


def evaluate(decoder: LineDecoder, pairs: list[tuple[str, str]]) -> Evaluation:
    start = time.perf_counter()
    predicted = decoder.predict([left for left, _ in pairs])
    seconds = time.perf_counter() - start
    ev = score(pairs, predicted)
    ev.seconds = seconds
    return ev


def write_mistakes(path: Path, ev: Evaluation) -> None:
    """One mistake a line: ``factored=expected`` then a tab and what the model wrote."""
    path.write_text("".join(f"{f}={e}\t{p}\n" for f, e, p in ev.mistakes))


def render(ev: Evaluation, title: str) -> str:
    lines = [
        f"## {title}", "",
        f"Exact match {ev.overall.exact_match:.2%} of {ev.overall.lines:,} lines; token accuracy "
        f"{ev.token_accuracy:.2%}; decoded in {ev.seconds:.1f} s ({ev.overall.lines / max(ev.seconds, 1e-9):,.0f} lines/s).",
        "", "| group | lines | exact match |", "|---|---|---|",
    ]
    for label, groups in (("kind", ev.by_kind), ("target length", ev.by_length)):
        for key, tally in groups.items():
            lines.append(f"| {label} {key} | {tally.lines:,} | {tally.exact_match:.2%} |")
    return "\n".join(lines) + "\n"
