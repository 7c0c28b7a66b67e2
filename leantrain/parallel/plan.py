"""How the model is laid out over the ranks, and how its training state is saved from that layout.

Model preparation runs in one order (``leantrain/train/run.py``, docs/ARCHITECTURE.md): build the model -> the
plan lays it out (FSDP shards it, pipeline keeps this rank's stage) -> the techniques that change the model
prepare it (activation checkpointing, precision fallbacks) -> the preflight -> the optimizer over what this
rank holds -> the wrappers of the forward at fit start (the DDP wrap, compilation).

Checkpoints always hold the *whole* model under the model's own parameter names, whatever the layout,
so a checkpoint or model file from a 2-stage or 2-shard run loads into a one-process model and back.
The optimizer's state is saved in the layout's own form (resuming needs the same world anyway: the
batch order and per-rank random states depend on it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from leantrain.data.dataset import Dataset
from leantrain.parallel.dist import Dist
from leantrain.techniques.base import Technique

# Samples of the training split a plan prepares a stage's dry input for: the memory estimate's largest dry batch.
DRY_SAMPLES = 8


@dataclass(frozen=True)
class StageShare:
    """A pipeline stage's part of a training step, for the memory estimate: what the stage is fed, whether it
    computes the loss, and how many micro-batches' activations its schedule holds at once."""

    inputs: torch.Tensor | None  # the earlier stages' output on the first DRY_SAMPLES samples; None: the data
    computes_loss: bool
    microbatches: int  # each batch is cut into this many
    in_flight: int  # micro-batches forwarded and not yet back-propagated, at most (GPipe: all; 1F1B: stages left)


class ModeHooks(Technique):
    """A parallel mode's part in the loop (the DDP wrap, MPI's gradient averaging, an ensemble member's vote). It
    sees the model as the techniques that change it leave it; compilation runs after it (compile(DDP(model)))."""

    runs_after = ("complexity", "checkpointing", "precision")

    def release(self) -> None:
        """Let go of what holds the process group from C++, while it is still joined: the run ends (the fit
        finished or failed) and the group is about to be left. Nothing to let go of here."""


class ParallelPlan:
    """Every rank holds the whole model (one process, DDP, MPI, an ensemble member): nothing to lay out."""

    # Whether a rank's parameters (and gradients) are the whole model's, or a shard or stage of it.
    holds_whole_model = True
    # Whether this rank's module runs only part of the forward (a pipeline stage): no dry step without the others.
    stage_only = False

    def __init__(self, dist: Dist):
        self.dist = dist
        self.data_dist = dist  # the ranks that split each batch between them (and sum their metrics)

    def prepare(self, model: nn.Module, dataset: Dataset) -> nn.Module:
        """The module this rank trains (the optimizer is built over its parameters)."""
        return model

    def optimized(self, module: nn.Module) -> nn.Module:
        """What the optimizer is built over: the prepared module, or (a sharded optimizer) this rank's slice of it."""
        return module

    def stage_share(self) -> StageShare | None:
        """This rank's part of a step when it runs only part of the forward (a pipeline stage); None: all of it."""
        return None

    def attach(self, state: Any) -> None:
        """Set the loop's hooks on the TrainState (a pipeline runs forward and backward itself)."""

    def model_state(self, module: nn.Module) -> dict[str, Any]:
        """The whole model's state dict (every rank calls it; complete on the main rank)."""
        return module.state_dict()

    def load_model_state(self, module: nn.Module, saved: dict[str, Any]) -> None:
        module.load_state_dict(saved)

    def optimizer_state(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> Any:
        return optimizer.state_dict()

    def load_optimizer_state(self, module: nn.Module, optimizer: torch.optim.Optimizer, saved: Any) -> None:
        optimizer.load_state_dict(saved)

    def record(self) -> dict[str, Any]:
        """What the run record says about the layout."""
        return {}
