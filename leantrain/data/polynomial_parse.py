"""Reading the polynomial data's factored side back: ``parse_factors`` inverts ``format_factored`` for every form the
task has (checked on the 100k real lines); ``canonical_factored`` writes a product the way the data write it.
"""
from __future__ import annotations

import re

from leantrain.data.polynomial import Factors, format_factored

_TERM = r"(?:(sin|cos|tan)\(([a-z])\)|([a-z]))"
_NUM_T = r"(-?\d+\*|-)?"  # an optional coefficient in front of the term: "-7*", "-", ""


def _coefficient(prefix: str | None) -> int:
    return 1 if not prefix else -1 if prefix == "-" else int(prefix[:-1])


def _parse_linear(text: str, t: str) -> tuple[int, int]:
    """``a*t+b`` or ``b-a*t`` -> (a, b)."""
    te = re.escape(t)
    m = re.fullmatch(rf"{_NUM_T}{te}([+-]\d+)", text)
    if m:
        return _coefficient(m.group(1)), int(m.group(2))
    m = re.fullmatch(rf"(\d+)-(\d+\*)?{te}", text)
    if m:
        return -_coefficient(m.group(2)), int(m.group(1))
    raise ValueError(f"not a linear factor in {t}: {text!r}")


def parse_factors(line: str) -> Factors:
    """The factors of a line (for ``c*t**2`` the split of ``c`` is arbitrary: ``a1 = c``, ``a2 = 1``)."""
    left = line.partition("=")[0]
    m = re.search(_TERM, left)
    if m is None:
        raise ValueError(f"no variable in {line!r}")
    wrap, variable = (m.group(1), m.group(2)) if m.group(1) else ("", m.group(3))
    t = f"{wrap}({variable})" if wrap else variable
    te = re.escape(t)
    if m2 := re.fullmatch(r"\(([^()]*(?:\([a-z]\)[^()]*)*)\)\*\*2", left):
        a, b = _parse_linear(m2.group(1), t)
        return Factors(variable, wrap, a, b, a, b)
    if m2 := re.fullmatch(rf"{_NUM_T}{te}\*\*2", left):
        return Factors(variable, wrap, _coefficient(m2.group(1)), 0, 1, 0)
    if m2 := re.fullmatch(rf"{_NUM_T}(?:{te}\*\((.*)\)|\((.*)\)\*{te})", left):
        a, b = _parse_linear(m2.group(2) if m2.group(2) is not None else m2.group(3), t)  # "" is a bad factor
        return Factors(variable, wrap, _coefficient(m2.group(1)), 0, a, b)
    depth, split = 0, -1
    for i, ch in enumerate(left):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and ch == "*" and i > 0 and left[i - 1] == ")" and left[i + 1 : i + 2] == "(":
            split = i
            break
    if split < 0 or not (left.startswith("(") and left.endswith(")")):
        raise ValueError(f"unrecognised factored side {left!r}")
    (a1, b1), (a2, b2) = _parse_linear(left[1 : split - 1], t), _parse_linear(left[split + 2 : -1], t)
    return Factors(variable, wrap, a1, b1, a2, b2)


def canonical_factored(text: str) -> str:
    """A product the data could hold, written as the data write it: sympy's factor order (``(x+1)*(x-2)`` becomes
    ``(x-2)*(x+1)``), a repeated factor as ``**2``, a factor as sympy prints it (``-x+5`` becomes ``5-x``): the same
    product, in the form a model trained on the data has seen. Text that is not such a product comes back as it is,
    and so does a product whose data form would be longer."""
    if "=" in text:
        return text  # a line, not a product
    try:
        canonical = format_factored(parse_factors(text))
    except ValueError:
        return text
    return canonical if len(canonical) <= len(text) else text
