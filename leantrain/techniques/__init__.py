"""Training techniques: each a small object hooking the loop's events (see base.py), switched on by config."""
from __future__ import annotations

from typing import TYPE_CHECKING

from leantrain.techniques.accumulation import AdaptiveAccumulation
from leantrain.techniques.base import Technique, fire
from leantrain.techniques.checkpointing import ActivationCheckpointing
from leantrain.techniques.compile import Compile
from leantrain.techniques.complexity import ComplexityMatching
from leantrain.techniques.precision import GradClip, MixedPrecision
from leantrain.techniques.schedule import WarmupCosine

if TYPE_CHECKING:
    from leantrain.config import RunConfig

__all__ = [
    "Technique", "fire", "MixedPrecision", "GradClip", "ActivationCheckpointing", "AdaptiveAccumulation",
    "WarmupCosine", "ComplexityMatching", "Compile", "from_config", "TECHNIQUE_SUMMARIES",
]

# One line per technique for `leantrain list`: the config key that switches it on, and what it does.
TECHNIQUE_SUMMARIES = {
    "precision": "mixed precision: bf16 autocast, or fp16 autocast + fp32 master weights + dynamic loss scaling",
    "grad_clip": "clip the global gradient norm to a maximum (after fp16 unscaling)",
    "checkpointing": "activation checkpointing of the model's blocks in √L (or N) segments: less memory, one more forward",
    "accumulation": "adaptive gradient accumulation: micro-batches per step follow the gradient noise scale (McCandlish 2018)",
    "schedule": "warmup-cosine: linear warmup, then cosine annealing to a floor, over the data seen",
    "complexity": "complexity matching (seed 000): start narrow, widen the hidden layer (Net2Net) while it helps",
    "compile": "torch.compile the forward pass; eager mode with a warning where it fails",
}


def from_config(config: RunConfig) -> list[Technique]:
    """The techniques a validated RunConfig switches on, in the order their hooks fire.

    Order matters where two write the same thing: complexity matching replaces the optimizer before
    anything reads it; accumulation sets the effective batch's base lr before the schedule shapes it;
    clipping sees gradients after every other technique has inspected them.
    """
    techniques: list[Technique] = []
    if config.complexity == "match":
        techniques.append(ComplexityMatching(config.start_width, config.max_width, seed=config.seed))
    if config.precision in ("bf16", "fp16"):  # "auto" is resolved to one of these (or fp32) before training
        techniques.append(MixedPrecision(config.precision))
    if config.checkpointing != "off":
        techniques.append(ActivationCheckpointing(config.checkpointing))
    if config.compile:
        techniques.append(Compile())
    if config.accumulation == "adaptive":
        techniques.append(
            AdaptiveAccumulation(k_max=config.accum_max, lr_scaling=config.lr_scaling, micro_batch_size=config.batch_size)
        )
    if config.schedule == "warmup-cosine":
        techniques.append(WarmupCosine(config.warmup, config.min_lr_ratio))
    if config.grad_clip is not None:
        techniques.append(GradClip(config.grad_clip))
    return techniques
