"""Distribution statistics of polynomial lines, to check the generator against the task's real lines.

``compare_to_real(generated, real)`` gives, per statistic, the total-variation distance between the two
empirical distributions (0 = identical, 1 = disjoint). Coefficients are recovered by parsing the factored
side (``polynomial_parse.parse_factors``), which inverts ``format_factored`` for every form the task has.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from leantrain.data.polynomial_parse import parse_factors


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
