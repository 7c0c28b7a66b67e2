"""Training techniques: each a small object hooking the loop's events (see base.py), switched on by config."""
from __future__ import annotations

from typing import TYPE_CHECKING

from leantrain.techniques.base import Technique, fire
from leantrain.techniques.precision import MixedPrecision

if TYPE_CHECKING:
    from leantrain.config import RunConfig

__all__ = ["Technique", "fire", "MixedPrecision", "from_config", "TECHNIQUE_SUMMARIES"]

# One line per technique for `leantrain list`: the config key that switches it on, and what it does.
TECHNIQUE_SUMMARIES = {
    "precision": "mixed precision: bf16 autocast, or fp16 autocast + fp32 master weights + dynamic loss scaling",
}


def from_config(config: "RunConfig") -> list[Technique]:
    """The techniques a validated RunConfig switches on, in the order their hooks fire."""
    techniques: list[Technique] = []
    if config.precision != "fp32":
        techniques.append(MixedPrecision(config.precision))
    return techniques
