"""Models by name: ``leantrain.models.build("mlp:hidden=256", dataset)``; third-party ones as ``timm:NAME``,
``torchvision:NAME`` and ``hf:TYPE`` (``thirdparty.py``)."""
from __future__ import annotations

from typing import Any

from torch import nn

from leantrain.data.dataset import Dataset
from leantrain.models import thirdparty
from leantrain.models.registry import MODELS
from leantrain.models.user import build_user_model, is_import_spec, load_class
from leantrain.registry import call_with_overrides, check_spec, import_submodules, parse_spec

import_submodules(__name__)  # each model family's file registers its models; a new file needs no listing

__all__ = ["MODELS", "build", "check", "flops_per_sample"]


def build(spec: str, data: Dataset, **overrides: Any) -> nn.Module:
    """A registered model (``mlp:hidden=256``), a third-party one (``timm:resnet18``, ``hf:bert:num_labels=2``) or
    a user's class by import path (``my_pkg.models:Net:k=v``)."""
    if thirdparty.is_thirdparty_spec(spec) and not overrides:
        return thirdparty.build(spec, data)
    if is_import_spec(spec) and not overrides:
        return build_user_model(spec, data)
    name, spec_overrides = parse_spec(spec)
    entry = MODELS.get(name)
    return call_with_overrides("model", name, entry.builder, {**spec_overrides, **overrides}, data=data)


def check(spec: str) -> None:
    """Validate a model spec without building it: the name, its options' names and types, the package it needs."""
    if thirdparty.is_thirdparty_spec(spec):
        thirdparty.check(spec)
    elif is_import_spec(spec):
        load_class(spec)  # importable, and its options are the constructor's
    else:
        check_spec(MODELS, spec, "data")


def flops_per_sample(model: nn.Module) -> float | None:
    """Forward FLOPs per sample if the model declares them (every registered model does)."""
    declared = getattr(model, "flops_per_sample", None)
    return float(declared()) if callable(declared) else None
