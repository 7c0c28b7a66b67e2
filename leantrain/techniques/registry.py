"""The technique registry: every Technique class declared with ``@register`` in its own module under
``leantrain/techniques/``. RunConfig's technique keys, the CLI flags, ``leantrain list``, the README's
composition table and ``from_config`` all read it; nothing else lists techniques.
"""
from __future__ import annotations

from typing import Any, TypeVar

from leantrain.options import Option
from leantrain.techniques.base import Technique, in_hook_order

T = TypeVar("T", bound=type[Technique])

_REGISTERED: dict[str, type[Technique]] = {}


def register(cls: T) -> T:
    """Class decorator: make a technique switchable by config. Its option names must be new."""
    if cls.name in _REGISTERED:
        raise ValueError(f"technique {cls.name!r} is registered twice")
    taken = {o.name for o in options()}
    clashes = [o.name for o in cls.options if o.name in taken]
    if clashes or not cls.options:
        raise ValueError(f"technique {cls.name!r} needs options with new names; {', '.join(clashes) or 'none'} given")
    if vars(cls).get("parallel_modes") is None:  # the names are checked against the modes in parallel/composition.py
        raise ValueError(f"technique {cls.name!r} must list the parallel modes it composes with: parallel_modes = "
                         "frozenset({...}) (leantrain list shows the modes)")
    _REGISTERED[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Undo ``register`` (for tests that declare a technique of their own)."""
    del _REGISTERED[name]


def techniques() -> list[type[Technique]]:
    """Registered technique classes, by name."""
    return [_REGISTERED[name] for name in sorted(_REGISTERED)]


def options() -> list[Option]:
    """Every technique's config keys, technique by technique."""
    return [option for cls in techniques() for option in cls.options]


def from_config(config: Any) -> list[Technique]:
    """The techniques a validated RunConfig switches on, in the order their hooks fire."""
    built = [cls.from_config(config) for cls in techniques()]
    return in_hook_order([t for t in built if t is not None])


def check_model(config: Any, model: Any) -> None:
    """Each switched-on technique's checks against the built model (``Technique.check_model``)."""
    for cls in techniques():
        if cls.is_switched_on(config):
            cls.check_model(config, model)


def switched_on(config: Any) -> set[str]:
    """The techniques a validated RunConfig switches on, ``auto`` settings included (chosen later, but on)."""
    return {cls.name for cls in techniques() if cls.is_switched_on(config)}
