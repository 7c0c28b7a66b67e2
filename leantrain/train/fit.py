"""``leantrain.fit``: train a user's own ``nn.Module`` through leantrain's loop, with minimal changes to their code."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from leantrain.config import RunConfig
from leantrain.data.dataset import Dataset
from leantrain.errors import UsageError
from leantrain.techniques.base import Technique
from leantrain.train.run import execute


def fit(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int = 5,
    techniques: Sequence[Technique] = (),
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    quiet: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Train ``model`` on ``data`` (from ``leantrain.data.load`` or ``leantrain.data.from_tensors``).

    ``options`` are RunConfig fields (batch_size, lr, optimizer, device, seed, target, precision, ...);
    ``techniques`` (objects) run in addition to those the options switch on, never the same one twice.
    Returns the run's record (the same JSON document ``leantrain train`` writes). With
    ``checkpoint_dir``, a checkpoint is written each epoch and the record saved there at the end;
    ``resume=True`` continues from it; ``force=True`` replaces a finished record or an interrupted checkpoint.
    Bad arguments raise ``leantrain.UsageError`` naming the argument.
    """
    if not isinstance(model, nn.Module):
        raise UsageError(f"fit: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(data, Dataset):
        raise UsageError("fit: data must be a leantrain Dataset; wrap tensors with leantrain.data.from_tensors(x, y)")
    if isinstance(techniques, (str, bytes)) or not all(isinstance(t, Technique) for t in techniques):
        raise UsageError("fit: techniques must be a list of leantrain techniques, e.g. [lt.MixedPrecision('bf16')]")
    if not any(p.requires_grad for p in model.parameters()):
        raise UsageError(f"fit: {type(model).__name__} has no trainable parameters")
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, Path)):
        raise UsageError(f"fit: checkpoint_dir must be a path, got {type(checkpoint_dir).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        raise UsageError(f"fit: epochs must be an integer, got {epochs!r}")
    options.setdefault("name", f"{type(model).__name__.lower()}-{data.name}")
    config = RunConfig.from_dict({"model": "mlp", "data": "imagenet-sim", "epochs": epochs, **options}, where="fit")
    # Techniques switched on by option (precision="bf16") run with those passed as objects; execute refuses
    # one name given both ways.
    out_dir = Path(checkpoint_dir) if checkpoint_dir else None
    record = execute(
        config, model=model, dataset=data, techniques=list(techniques), out_dir=out_dir, resume=resume,
        quiet=quiet, force=force,
        extra_run_fields={"model": type(model).__name__, "data": data.name,
                          "data_shape": list(data.x_train.shape[1:])},
    )
    return record
