"""``leantrain predict``: factored lines in, expanded lines out, one for one and in order.

Lines are checked as they are read and decoded a batch at a time; each batch is written and flushed before the
next is read, so a long input streams. A bad line stops the run with its line number, after the lines before
it have been written. A blank line gives a blank line; ``factored=expanded`` input is read as its factored side,
so a data file can be piped in as it is. For a model trained on the generated polynomial data, a product written
otherwise than the data write it (``(x+1)*(x-2)``: the data write ``(x-2)*(x+1)``) is put in the data's form first: the same
product, in the form the model was trained on.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TextIO

from leantrain.data.polynomial_parse import canonical_factored
from leantrain.errors import UsageError
from leantrain.inference.lines import LineDecoder, numbered_lines
from leantrain.registry import parse_spec


def predict_stream(decoder: LineDecoder, source: Iterable[str], out: TextIO, name: str) -> int:
    """Write one expansion per input line to ``out``; returns the number of lines written."""
    pending: list[str] = []
    written = 0
    as_trained = _as_trained(decoder)

    def flush() -> None:
        nonlocal written
        texts = [t for t in pending if t]
        predicted = iter(decoder.predict(texts))
        out.write("".join((next(predicted) if t else "") + "\n" for t in pending))
        out.flush()
        written += len(pending)
        pending.clear()

    for number, line in numbered_lines(source):
        text = line.partition("=")[0]
        try:
            pending.append(as_trained(decoder.check(text, f"{name} line {number}", side="factored side")))
        except UsageError:
            flush()  # the good lines before the bad one are not lost
            raise
        if len(pending) >= decoder.batch_size:
            flush()
    flush()
    return written


def _as_trained(decoder: LineDecoder) -> Callable[[str], str]:
    """A line as the model's training data wrote it: the generated polynomial data's form (sympy's); any other
    model's lines, one trained on a file of lines (in whatever order the file had) too, as they are."""
    name, options = parse_spec(decoder.saved.data_spec)
    if name == "polynomial" and "path" not in options:
        return canonical_factored
    return lambda text: text
