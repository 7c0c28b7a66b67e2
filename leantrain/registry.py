"""Name -> builder registries (timm-style): a decorator to add, a lookup that lists what exists."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from leantrain.errors import UsageError

T = TypeVar("T", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    builder: T
    summary: str


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, summary: str) -> Callable[[T], T]:
        def add(builder: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, builder, summary)
            return builder

        return add

    def unregister(self, name: str) -> None:
        """Undo ``register`` (for tests that declare an entry of their own)."""
        del self._entries[name]

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UsageError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __iter__(self) -> Iterator[Entry[T]]:
        return (self._entries[n] for n in self.names())

    def __contains__(self, name: str) -> bool:
        return name in self._entries


def import_submodules(package: str) -> None:
    """Import every module of a package, so that a new file's ``@register`` runs without being listed anywhere."""
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(f"{package}.{module.name}")


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """'imagenet-sim:n=5000,noise=0.1' -> ('imagenet-sim', {'n': '5000', 'noise': '0.1'})."""
    name, _, rest = spec.partition(":")
    overrides: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"bad option {item!r} in {spec!r}; write NAME:key=value,key=value")
        overrides[key.strip()] = value.strip()
    return name.strip(), overrides


def resolve_options(kind: str, name: str, builder: Callable[..., Any], overrides: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    """Check option names against the builder's keyword-only parameters and coerce strings to their types."""
    params = inspect.signature(builder).parameters
    allowed = [p for p in params if p not in fixed and params[p].kind is inspect.Parameter.KEYWORD_ONLY]
    kwargs: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in allowed:
            raise UsageError(f"{kind} {name!r} has no option {key!r}; options: {', '.join(allowed) or 'none'}")
        kwargs[key] = coerce_option(kind, name, key, value, params[key].default)
    return kwargs


def call_with_overrides(kind: str, name: str, builder: Callable[..., Any], overrides: dict[str, Any], **fixed: Any) -> Any:
    """Call a builder with string or typed overrides, coerced to the types of its keyword defaults.

    Bad names and option types are UsageErrors here; a builder raises UsageError itself for a value out of
    range. Anything else a builder raises is a bug in it, and propagates with its own traceback.
    """
    kwargs = resolve_options(kind, name, builder, overrides, fixed)
    return builder(**fixed, **kwargs)


def check_spec(registry: Registry, spec: str, *fixed_names: str) -> None:
    """Validate a 'name:key=value' spec (name, option names, option types) without building anything."""
    name, overrides = parse_spec(spec)
    resolve_options(registry.kind, name, registry.get(name).builder, overrides, dict.fromkeys(fixed_names))


def coerce_option(kind: str, name: str, key: str, value: Any, default: Any) -> Any:
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        return type(default)(value)
    except ValueError:
        raise UsageError(
            f"{kind} {name!r}: option {key}={value!r} is not a valid {type(default).__name__}"
        ) from None
