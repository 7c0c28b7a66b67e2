"""Run leantrain's own ``execute`` on N forked worker processes that rendezvous through a file (no port)."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from leantrain.config import RunConfig
from leantrain.techniques import Technique
from leantrain.train.run import execute


class ParamTrace(Technique):
    """The model's parameters, flattened, after every optimizer step: the per-step reference."""

    name = "param-trace"
    order = 99

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def after_optimizer_step(self, state) -> None:
        self.steps.append(torch.cat([p.detach().flatten() for p in state.model.parameters()]).clone())


def world_env(rank: int, world_size: int, init_file: Path) -> dict[str, str]:
    return {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world_size), "LEANTRAIN_INIT_METHOD": f"file://{init_file}"}


def _worker(rank: int, world_size: int, folder: Path, config: dict[str, Any],
            make_techniques: Callable[[], list[Technique]], out_dir: Path | None) -> None:
    os.environ.update(world_env(rank, world_size, folder / "rendezvous"))
    torch.set_num_threads(1)
    trace = ParamTrace()
    record = execute(RunConfig.from_dict(config), techniques=[*make_techniques(), trace], quiet=True, out_dir=out_dir)
    torch.save({"steps": trace.steps, "record": record}, folder / f"rank{rank}.pt")


def run_workers(world_size: int, folder: Path, config: dict[str, Any],
                make_techniques: Callable[[], list[Technique]] = list, out_dir: Path | None = None) -> list[dict]:
    """Fork ``world_size`` workers running ``execute(config)``; return each rank's trace and record."""
    folder.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_worker, args=(world_size, folder, config, make_techniques, out_dir), nprocs=world_size,
                       start_method="fork", join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def run_single(config: dict[str, Any], make_techniques: Callable[[], list[Technique]] = list) -> dict:
    torch.set_num_threads(1)
    trace = ParamTrace()
    record = execute(RunConfig.from_dict(config), techniques=[*make_techniques(), trace], quiet=True)
    return {"steps": trace.steps, "record": record}
