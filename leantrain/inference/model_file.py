"""The saved model: one self-describing file that ``evaluate`` and ``predict`` need nothing else to use.

It holds the weights, the model spec (``seq2seq-transformer:d_model=128``), the data spec it trained on, the
shapes and facts a builder reads from a data set (task, input shape, vocabulary, pad/BOS/EOS), and the name
of the run's JSON record. It is plain tensors, strings and numbers, so it loads with
``torch.load(weights_only=True)``: opening a model file never runs code from it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leantrain import models
from leantrain.data.dataset import Dataset
from leantrain.errors import UsageError
from leantrain.fileio import atomic_path

FORMAT = "leantrain-model"
VERSION = 1
SUFFIX = ".model.pt"


@dataclass
class SavedModel:
    model: nn.Module
    model_spec: str
    data_spec: str
    task: str
    info: dict[str, Any]  # the data set's facts: vocab, pad_index, bos_index, eos_index, ...
    record: str | None  # the training record's file name, beside the model file
    path: Path

    @property
    def vocab(self) -> list[str]:
        return list(self.info.get("vocab", []))


def _plain(info: dict[str, Any]) -> dict[str, Any]:
    """The facts that survive JSON (what weights_only can load); anything else is left out."""
    kept = {}
    for key, value in info.items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        kept[key] = value
    return kept


def save_model(path: Path, model: nn.Module | dict[str, Any], *, model_spec: str, data_spec: str, data: Dataset,
               record: str | None = None, weights_dtype: torch.dtype | None = None) -> Path:
    """``weights_dtype`` (e.g. torch.float16): floating-point weights stored in it, half the file; loading copies
    them back into the model's own dtype."""
    state = model if isinstance(model, dict) else model.state_dict()
    payload = {
        "format": FORMAT, "version": VERSION, "model_spec": model_spec, "data_spec": data_spec, "record": record,
        "task": data.task, "num_classes": data.num_classes, "info": _plain(data.info),
        "x_shape": list(data.x_train.shape[1:]), "x_dtype": str(data.x_train.dtype).removeprefix("torch."),
        "y_shape": list(data.y_train.shape[1:]), "y_dtype": str(data.y_train.dtype).removeprefix("torch."),
        # A module, or its (gathered) state dict: a sharded or staged model's whole weights.
        "state_dict": {k: _stored(v.detach().cpu(), weights_dtype) for k, v in state.items()},
    }
    with atomic_path(path) as tmp:  # a crash never leaves half a model file under the final name
        torch.save(payload, tmp)
    return path


def _stored(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def find_model(path: Path) -> Path:
    """A model file, or the single ``*.model.pt`` in a run folder."""
    if path.is_dir():
        found = sorted(path.glob(f"*{SUFFIX}"))
        if len(found) != 1:
            listing = ", ".join(p.name for p in found) or "none"
            raise UsageError(f"{path}: expected one *{SUFFIX} model file (train with --save-model), found {listing}")
        return found[0]
    if not path.is_file():
        raise UsageError(f"{path}: no such model file or run folder")
    return path


def read_model_file(file: Path) -> dict[str, Any]:
    """A model file's payload (weights, specs, the data's facts), checked to be one; nothing is built from it."""
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  # a cut file fails anywhere in the unpickler (even KeyError)
        raise UsageError(f"{file}: not a leantrain model file, or truncated ({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UsageError(f"{file}: not a leantrain model file (write one with leantrain train --save-model)")
    if payload.get("version") != VERSION:
        raise UsageError(f"{file}: model file version {payload.get('version')!r}; this leantrain reads version {VERSION}")
    return payload


def load_model(path: Path, device: str | torch.device = "cpu") -> SavedModel:
    file = find_model(path)
    payload = read_model_file(file)
    model = models.build(payload["model_spec"], _stand_in(payload))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise UsageError(f"{file}: its weights do not fit model {payload['model_spec']!r} "
                         f"({str(e).splitlines()[0]})") from None
    model.to(device).eval()
    return SavedModel(model, payload["model_spec"], payload["data_spec"], payload["task"], payload["info"],
                      payload.get("record"), file)


def _stand_in(payload: dict[str, Any]) -> Dataset:
    """A two-sample data set of the saved shapes and facts: what a model builder reads, without the data."""
    x = torch.zeros(2, *payload["x_shape"], dtype=getattr(torch, payload["x_dtype"]))
    y = torch.zeros(2, *payload["y_shape"], dtype=getattr(torch, payload["y_dtype"]))
    return Dataset("saved", x, y, x, y, task=payload["task"], num_classes=payload["num_classes"], info=payload["info"])
