"""Training techniques: one module each, a small object hooking the loop's events (see base.py), declared with
``@register`` (registry.py) so that config keys, CLI flags and ``leantrain list`` follow from the module alone."""
from __future__ import annotations

from leantrain.registry import import_submodules
from leantrain.techniques.accumulation import AdaptiveAccumulation
from leantrain.techniques.base import Event, Technique, fire
from leantrain.techniques.checkpointing import ActivationCheckpointing
from leantrain.techniques.compile import Compile
from leantrain.techniques.complexity import ComplexityMatching
from leantrain.techniques.precision import GradClip, MixedPrecision
from leantrain.techniques.registry import from_config, register, unregister
from leantrain.techniques.schedule import WarmupCosine

import_submodules(__name__)  # a technique added as a new file registers itself here, unlisted

__all__ = [
    "Event", "Technique", "fire", "register", "unregister", "from_config", "MixedPrecision", "GradClip",
    "ActivationCheckpointing", "AdaptiveAccumulation", "WarmupCosine", "ComplexityMatching", "Compile",
]
