"""A user's own model class by import path: ``--model my_pkg.models:Net[:key=value,...]``.

The module is imported (the current folder is searched too, as ``python -m`` does), the class called with the
keyword options, values coerced to the types of the constructor's defaults; a constructor with a ``data``
parameter also receives the run's Dataset (to size its input and output layers from the data). A registered
model's spec has ``key=value`` after its colon; an import path has an attribute name there, which tells them apart.
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

from torch import nn

from leantrain.errors import UsageError
from leantrain.registry import coerce_option, parse_spec


def is_import_spec(spec: str) -> bool:
    name, colon, rest = spec.partition(":")
    attribute = rest.partition(":")[0]
    return bool(colon) and bool(attribute) and "=" not in attribute and attribute.isidentifier()


def split_import_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    module, _, rest = spec.partition(":")
    attribute, _, options = rest.partition(":")
    _, overrides = parse_spec(f"x:{options}") if options else ("", {})
    return module.strip(), attribute.strip(), overrides


def load_class(spec: str) -> tuple[Any, dict[str, Any]]:
    """The class (or factory) a spec names and its coerced keyword options; one line if any part is wrong."""
    module_name, attribute, overrides = split_import_spec(spec)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(f"model {spec!r}: cannot import module {module_name!r} ({e}); is it on PYTHONPATH or in "
                         "the current folder?") from None
    builder = getattr(module, attribute, None)
    if builder is None or not callable(builder):
        public = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)
                        and v.__module__ == module.__name__)
        raise UsageError(f"model {spec!r}: module {module_name} has no model {attribute!r}; "
                         f"its nn.Module classes: {', '.join(public) or 'none'}")
    params = inspect.signature(builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in params and not takes_any or key == "data":
            allowed = [p for p in params if p not in ("self", "data")]
            raise UsageError(f"model {spec!r}: {attribute} takes no option {key!r}; options: {', '.join(allowed) or 'none'}")
        default = params[key].default if key in params else inspect.Parameter.empty
        if default is inspect.Parameter.empty or default is None:
            kwargs[key] = _literal(value)
        else:
            kwargs[key] = coerce_option("model", attribute, key, value, default)
    return builder, kwargs


def _literal(text: str) -> Any:
    """An option for a parameter without a default to type it by: an int, a float, a bool, else the text."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def build_user_model(spec: str, data: Any) -> nn.Module:
    builder, kwargs = load_class(spec)
    if "data" in inspect.signature(builder).parameters:
        kwargs["data"] = data
    try:
        model = builder(**kwargs)
    except TypeError as e:  # a required argument not given: the user's to fix, in one line
        raise UsageError(f"model {spec!r}: {e}; give it as {spec.split(':')[0]}:{spec.split(':')[1]}:key=value") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"model {spec!r} built a {type(model).__name__}, not a torch.nn.Module")
    return model
