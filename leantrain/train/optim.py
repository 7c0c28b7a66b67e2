"""The optimizer a RunConfig names, built over a model's trainable parameters (run.py and tuning's probes)."""
from __future__ import annotations

import torch
from torch import nn

from leantrain.config import RunConfig

# One Adam update, three implementations: a loop over tensors, grouped (foreach) kernels, one fused kernel.
ADAM_KERNELS: dict[str, dict[str, bool]] = {"adam": {"fused": False}, "foreach-adam": {"foreach": True}, "fused-adam": {"fused": True}}


def make_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer in ADAM_KERNELS:
        kernel = ADAM_KERNELS[config.optimizer]
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay,
                                foreach=kernel.get("foreach"), fused=kernel.get("fused"))
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
