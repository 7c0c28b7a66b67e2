"""Checks made before a run writes anything: the model takes the data, and the run's files are ours to write."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leantrain.errors import UsageError
from leantrain.fileio import clean_stale_temporaries, prepare_output_dir
from leantrain.tasks import get_task
from leantrain.train import checkpoint
from leantrain.train.run_identity import check_existing, inside, run_lock

DRY_SAMPLES = 2


def dry_forward(model: nn.Module, dataset: Any, config: Any) -> None:
    """One forward and loss on a tiny batch, in eval mode with the RNG put back: a model whose input does not
    fit the data (an MLP on token ids) fails here, in one line, instead of halfway through an experiment."""
    task = get_task(dataset.task)
    x, y = dataset.x_train[:DRY_SAMPLES], dataset.y_train[:DRY_SAMPLES]
    device = next((p.device for p in model.parameters()), x.device)
    rng, was_training = torch.get_rng_state(), model.training
    model.eval()  # no dropout draws, no batch-norm statistics updated
    try:
        with torch.no_grad():
            task.loss_sum(task.forward(model, x.to(device), y.to(device)), y.to(device))
    except UsageError:
        raise
    except (RuntimeError, IndexError, ValueError, TypeError, AttributeError) as e:
        first_line = (str(e).strip().splitlines() or [""])[0][:160]
        name = config.model if config.model and type(model).__module__.startswith("leantrain") else type(model).__name__
        raise UsageError(f"model {name} does not fit data {dataset.name}: a forward pass on {DRY_SAMPLES} samples "
                         f"failed ({type(e).__name__}: {first_line})") from None
    finally:
        model.train(was_training)
        torch.set_rng_state(rng)


@contextmanager
def run_files(out_dir: Path | None, run_name: str, *, resume: bool, force: bool) -> Iterator[Path | None]:
    """The run's checkpoint path, while this process holds the run's lock; None without a folder (or off rank 0).

    Under the lock: a killed writer's temporaries are removed, and a finished result or an interrupted run's
    checkpoint is refused unless resuming or forced."""
    if out_dir is None:
        yield None
        return
    prepare_output_dir(out_dir)  # only now: a bad data set or model never leaves an empty folder
    result = inside(out_dir, f"{run_name}.json")
    ckpt = inside(out_dir, f"{run_name}{checkpoint.SUFFIX}")
    with run_lock(out_dir, run_name):
        clean_stale_temporaries(out_dir, run_name)
        check_existing(result, ckpt, resume=resume, force=force)
        yield ckpt
