"""Sharded data parallelism with FSDP2 (``torch.distributed.fsdp.fully_shard``), one shard group per block.

Each block of ``model.blocks`` and then the model itself are sharded over all ranks: parameters,
gradients and the optimizer's state live 1/N per rank, and a block's parameters are gathered just for
its forward and backward. Gradients are reduce-scattered as means over the ranks, as DDP averages them.
Checkpoints hold the full state dicts (``torch.distributed.checkpoint.state_dict``, gathered to rank 0
on the CPU), so a checkpoint or model file from N ranks loads on any number, one process included.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from leantrain.data.dataset import Dataset
from leantrain.parallel.plan import ParallelPlan

# Saving: the whole state, on rank 0 only, in CPU memory. Loading: every rank read the same file.
_SAVE = StateDictOptions(full_state_dict=True, cpu_offload=True)
_LOAD = StateDictOptions(full_state_dict=True)


class FsdpPlan(ParallelPlan):
    holds_whole_model = False

    def prepare(self, model: nn.Module, dataset: Dataset) -> nn.Module:
        mesh = init_device_mesh(self.dist.device.type, (self.dist.world_size,))
        self._params = sum(p.numel() for p in model.parameters())
        for block in getattr(model, "blocks", nn.ModuleList()).children():  # each block its own shard group
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    def model_state(self, module: nn.Module) -> dict[str, Any]:
        return get_model_state_dict(module, options=_SAVE)

    def load_model_state(self, module: nn.Module, saved: dict[str, Any]) -> None:
        set_model_state_dict(module, saved, options=_LOAD)

    def optimizer_state(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> Any:
        return get_optimizer_state_dict(module, optimizer, options=_SAVE)

    def load_optimizer_state(self, module: nn.Module, optimizer: torch.optim.Optimizer, saved: Any) -> None:
        set_optimizer_state_dict(module, optimizer, saved, options=_LOAD)

    def record(self) -> dict[str, Any]:
        return {"params": self._params, "fsdp": {"shards": self.dist.world_size}}
