"""``init_from``: a run that starts from a saved model's weights instead of a fresh initialisation.

For fine-tuning a trained model on more (or other) data, and for carrying a long run on when its checkpoint (the
optimizer's state, the batch order) is lost but a model file of it was kept: the weights go on, the optimizer starts
afresh (a warmup lets Adam's moments settle). The file must be a leantrain model file (``--save-model``, or
``leantrain/shipped``) of the same architecture; a token model's vocabulary must be the data's own, or the token ids
would mean other tokens. The record says which file, by path and checksum.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from torch import nn

from leantrain.data.dataset import Dataset
from leantrain.errors import UsageError
from leantrain.inference.model_file import find_model, read_model_file


def load_initial_weights(model: nn.Module, source: str, dataset: Dataset) -> dict[str, Any]:
    """Copy the weights of the model file (or run folder) ``source`` into ``model``, in its own dtype; what the
    record keeps of the file is returned."""
    try:
        file = find_model(Path(source))
        payload = read_model_file(file)
    except UsageError as e:
        raise UsageError(f"init_from: {e}") from None
    where = f"init_from {file}"
    saved_vocab, vocab = payload["info"].get("vocab"), dataset.info.get("vocab")
    if saved_vocab is not None and vocab is not None and list(saved_vocab) != list(vocab):
        raise UsageError(f"{where}: its vocabulary ({len(saved_vocab)} tokens) is not this data's ({len(vocab)} "
                         "tokens): its token ids would mean other tokens; train on the data it was trained on")
    _check_fits(where, payload["model_spec"], payload["state_dict"], model.state_dict())
    model.load_state_dict(payload["state_dict"])  # copies into the model's dtype: an fp16 file into fp32 weights
    return {"path": str(file), "sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
            "model_spec": payload["model_spec"], "data_spec": payload["data_spec"], "record": payload.get("record")}


def _check_fits(where: str, saved_spec: str, saved: dict[str, Any], own: dict[str, Any]) -> None:
    """One line naming what differs, instead of load_state_dict's many."""
    missing, unexpected = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
    shapes = [f"{key}: {_shape(saved[key])} in the file, {_shape(own[key])} here" for key in sorted(own.keys() & saved.keys())
              if saved[key].shape != own[key].shape]
    if missing or unexpected or shapes:
        found = "; ".join(part for part in (
            f"missing {_few(missing)}" if missing else "", f"not in this model {_few(unexpected)}" if unexpected else "",
            _few(shapes) if shapes else "") if part)
        raise UsageError(f"{where}: its weights (model {saved_spec!r}) do not fit this run's model ({found})")


def _shape(tensor: Any) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def _few(items: list[str], shown: int = 3) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more
