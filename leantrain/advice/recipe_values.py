"""A recipe's values as the written recipe shows them: only what differs from RunConfig's defaults, in the spelling
of each place it goes (TOML, command-line flags, Python keywords). Shared by recipe.py and plain_script.py."""
from __future__ import annotations

import json
from typing import Any

from leantrain.config import config_options

# The experiment file sets these per run (seeds = [...], runs named by case, recipe and seed).
SET_PER_RUN = ("seed", "name")


def defaults() -> dict[str, Any]:
    """Every RunConfig key's default, core fields and technique keys alike."""
    return {o.name: o.default for o in config_options()}


def non_default(config: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``config`` (a ``RunConfig.to_dict()``) whose values are not the defaults, in its order."""
    known = defaults()
    return {k: v for k, v in config.items() if k not in known or v != known[k] or type(v) is not type(known[k])}


def changed(baseline: dict[str, Any], recommended: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """key -> (baseline's value, recommended's) where the two recipes differ."""
    known = defaults()
    keys = [*recommended, *(k for k in baseline if k not in recommended)]
    return {k: (baseline.get(k, known.get(k)), recommended.get(k, known.get(k))) for k in keys
            if baseline.get(k, known.get(k)) != recommended.get(k, known.get(k))}


def toml_value(value: Any) -> str:
    """A TOML literal: booleans, numbers, strings (TOML has no null: a None never reaches here, as every key
    that takes None has it as its default)."""
    if value is None:
        raise ValueError("TOML has no null; a setting of None is its default and is not written")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # floats round-trip; inf and nan are TOML's spelling too
    # JSON's escapes are TOML's basic-string escapes; DEL must be escaped in TOML, not in JSON.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def flag(key: str) -> str:
    """The ``leantrain train`` flag of a key (leantrain/cli.py: ``name`` is ``--run-name``)."""
    return "--run-name" if key == "name" else "--" + key.replace("_", "-")


def flag_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def described(value: Any) -> str:
    """A value in prose and tables: booleans as the flags spell them, the rest as written."""
    return flag_value(value) if value is not None else "none"
