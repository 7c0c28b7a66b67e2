"""Distribution statistics of polynomial lines, to check the generator against the task's real lines.

``compare_to_real(generated, real)`` gives, per statistic, the total-variation distance between the two
empirical distributions (0 = identical, 1 = disjoint). Coefficients are recovered by parsing the factored
side (``parse_factors``), which inverts ``format_factored`` for every form the task has.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from leantrain.data.polynomial import Factors

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
        a, b = _parse_linear(m2.group(2) or m2.group(3), t)
        return Factors(variable, wrap, _coefficient(m2.group(1)), 0, a, b)
    depth, split = 0, -1
    for i, ch in enumerate(left):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and ch == "*" and i > 0 and left[i - 1] == ")":
            split = i
            break
    if split < 0 or not (left.startswith("(") and left.endswith(")")):
        raise ValueError(f"unrecognised factored side {left!r}")
    (a1, b1), (a2, b2) = _parse_linear(left[1 : split - 1], t), _parse_linear(left[split + 2 : -1], t)
    return Factors(variable, wrap, a1, b1, a2, b2)


def line_statistics(lines: list[str]) -> dict[str, Counter]:
    """Counts per statistic: variable, wrap, side lengths, number of expanded terms, shape, coefficients."""
    stats: dict[str, Counter] = {
        k: Counter() for k in ("variable", "wrap", "left_len", "right_len", "terms", "shape", "a", "b")
    }
    for line in lines:
        left, _, right = line.partition("=")
        f = parse_factors(line)
        stats["variable"][f.variable] += 1
        stats["wrap"][f.wrap or "none"] += 1
        stats["left_len"][len(left)] += 1
        stats["right_len"][len(right)] += 1
        stats["terms"][1 + sum(ch in "+-" for ch in right[1:])] += 1
        bare = (f.b1 == 0) + (f.b2 == 0)
        shape = "square" if bare == 0 and left.endswith("**2") else ("two factors", "one bare", "both bare")[bare]
        stats["shape"][shape] += 1
        if bare < 2:  # a bare pair shows only the product of its coefficients
            for a, b in ((f.a1, f.b1), (f.a2, f.b2)):
                stats["a"][a] += 1
                if b:
                    stats["b"][b] += 1
    return stats


def total_variation(p: Counter, q: Counter) -> float:
    np_, nq = sum(p.values()) or 1, sum(q.values()) or 1
    return 0.5 * sum(abs(p[k] / np_ - q[k] / nq) for k in set(p) | set(q))


def compare_to_real(generated: list[str], real: list[str]) -> dict[str, float]:
    """Total-variation distance per statistic between generated and real lines."""
    g, r = line_statistics(generated), line_statistics(real)
    return {name: total_variation(g[name], r[name]) for name in g}


def read_real_lines(path: str | Path, limit: int = 0) -> list[str]:
    lines = [s for s in Path(path).read_text().splitlines() if s.strip()]
    return lines[:limit] if limit else lines
