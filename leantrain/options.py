"""One settable key: its type, default, help and allowed values. RunConfig's own fields and every technique's
keys are described the same way, so TOML parsing, CLI flags and validation treat them alike."""
from __future__ import annotations

import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from leantrain.errors import UsageError


@dataclass(frozen=True)
class Option:
    name: str  # the TOML key and RunConfig attribute; the CLI flag is --name-with-dashes
    type: Any  # a type or a union of types, e.g. float | None
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    # Returns the value, normalised (e.g. "4" from the command line -> 4), or raises ValueError saying what is wrong.
    check: Callable[[Any], Any] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def base_type(self) -> type:
        """The type a CLI flag parses to: the first of a union that is not None."""
        return next((t for t in _members(self.type) if t is not type(None)), str)

    def parse(self, value: Any, where: str) -> Any:
        """A TOML/JSON/CLI value checked against the type (ints widen to floats; bools are not ints)."""
        allowed = _members(self.type)
        if value is None and type(None) in allowed:
            return None
        for t in allowed:
            if t is str and isinstance(value, os.PathLike):  # lt.fit(init_from=Path(...)): a path is its text
                return os.fspath(value)
            if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                if not math.isfinite(value):
                    raise UsageError(f"{where}: {self.name} = {value!r} must be a finite number")
                return float(value)
            if t is not float and t is not type(None) and isinstance(value, t) and not (t is int and isinstance(value, bool)):
                return value
        names = " or ".join("none" if t is type(None) else t.__name__ for t in allowed)
        raise UsageError(f"{where}: {self.name} = {value!r} should be {names}")

    def validate(self, value: Any, where: str) -> Any:
        """Allowed values and the option's own check; returns the (normalised) value."""
        if self.choices and value not in self.choices:
            raise UsageError(f"{where}: {self.name} {value!r} is not one of: {', '.join(self.choices)}")
        if self.check is None:
            return value
        try:
            return self.check(value)
        except ValueError as e:
            raise UsageError(f"{where}: {e}") from None


def _members(t: Any) -> tuple[Any, ...]:
    return typing.get_args(t) if isinstance(t, types.UnionType) else (t,)
