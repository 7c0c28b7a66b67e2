"""Which techniques compose with which parallel modes: each technique declares its modes (``parallel_modes``, an
allow-list), each mode is a file in ``parallel/modes/``; this module holds the rule and the README's table.

It sits above both registries, so that techniques need not know the modes (a mode added later is refused by a
technique until it names it).
"""
from __future__ import annotations

from leantrain.errors import UsageError
from leantrain.parallel.strategy import mode_names
from leantrain.techniques.base import Technique
from leantrain.techniques.registry import techniques


def check_parallel_mode(enabled: list[Technique], mode: str) -> None:
    """Refuse, in one line, techniques that do not compose with a parallel mode (for preflight)."""
    check_declared_modes()
    refused = [t.name for t in enabled if t.parallel_modes is not None and mode not in t.parallel_modes]
    if refused:
        raise UsageError(f"--parallel {mode} does not compose with: {', '.join(refused)}; switch them off or run another mode")


def check_declared_modes() -> None:
    """Every mode a registered technique names exists (a typo would silently refuse that mode)."""
    known = set(mode_names())
    for cls in techniques():
        unknown = set(cls.parallel_modes or ()) - known
        if unknown:
            raise ValueError(f"technique {cls.name!r}: unknown parallel modes {sorted(unknown)}; known: {sorted(known)}")


def composition_table() -> str:
    """The README's table: each technique's switch, what it runs after, and the parallel modes it composes with."""
    header = ["technique", "config keys", "runs after", *mode_names()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cls in techniques():
        keys = ", ".join(f"`{o.name}`" for o in cls.options)
        after = ", ".join(cls.runs_after) or "—"
        modes = ["✓" if mode in (cls.parallel_modes or ()) else "—" for mode in mode_names()]
        lines.append("| " + " | ".join([cls.name, keys, after, *modes]) + " |")
    return "\n".join(lines)
