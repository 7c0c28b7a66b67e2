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
    for key, lists, ids in (("vocab", "vocabularies", "tokens"), ("classes", "class lists", "classes")):
        saved, own = payload["info"].get(key), dataset.info.get(key)  # what the first and last layers' ids mean
        if saved is not None and own is not None and list(saved) != list(own):
            raise UsageError(f"{where}: the {lists} differ (the file's {len(saved)}: {_few(list(map(str, saved)))}; "
                             f"this data's {len(own)}: {_few(list(map(str, own)))}), so its ids would mean other {ids}")
    _check_fits(where, payload["model_spec"], payload["state_dict"], model.state_dict())
    model.load_state_dict(payload["state_dict"])  # copies into the model's dtype: an fp16 file into fp32 weights
    checksum = hashlib.sha256()
    with file.open("rb") as stream:  # in pieces: N ranks on a node need not hold N more copies of a big file
        for piece in iter(lambda: stream.read(1 << 20), b""):
            checksum.update(piece)
    return {"path": str(file), "sha256": checksum.hexdigest(), "model_spec": payload["model_spec"],
            "data_spec": payload["data_spec"], "record": payload.get("record")}


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
