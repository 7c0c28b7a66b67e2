"""Models by name: ``leantrain.models.build("mlp:hidden=256", dataset)``."""
from __future__ import annotations

from typing import Any

from torch import nn

from leantrain.data.dataset import Dataset
from leantrain.models.registry import MODELS
from leantrain.models.user import build_user_model, is_import_spec
from leantrain.registry import call_with_overrides, import_submodules, parse_spec

import_submodules(__name__)  # each model family's file registers its models; a new file needs no listing

__all__ = ["MODELS", "build", "flops_per_sample"]


def build(spec: str, data: Dataset, **overrides: Any) -> nn.Module:
    """A registered model (``mlp:hidden=256``) or a user's class by import path (``my_pkg.models:Net:k=v``)."""
    if is_import_spec(spec) and not overrides:
        return build_user_model(spec, data)
    name, spec_overrides = parse_spec(spec)
    entry = MODELS.get(name)
    return call_with_overrides("model", name, entry.builder, {**spec_overrides, **overrides}, data=data)


def flops_per_sample(model: nn.Module) -> float | None:
    """Forward FLOPs per sample if the model declares them (every registered model does)."""
    declared = getattr(model, "flops_per_sample", None)
    return float(declared()) if callable(declared) else None
