"""What ``leantrain.fit`` returns: the run's record, the trained model, and a way to use it.

``FitResult`` is the run's record (the JSON document ``leantrain train`` writes) with the trained model beside it,
so every number it shows is one the record holds. It is a ``dict`` (``result["summary"]``, ``json.dump(result)``),
as ``fit`` returned the plain record before.

It is data: how a result is shown (a DataFrame, the report's chart) is ``experiments/views.py``'s, whose views
``leantrain/__init__.py`` hands to ``FitResult.views``, so that nothing here imports the layer above ``train/``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class ResultViews:
    """How a result is shown; ``experiments/views.py`` draws them."""

    frame: Callable[[Any], Any]  # the epochs as a pandas DataFrame
    figure: Callable[..., Any]  # the report's per-epoch chart, a matplotlib Figure


class FitResult(dict[str, Any]):
    """One finished ``fit``: the run's record as a dict (``schema``, ``run``, ``env``, ``epochs``, ``summary``), and

    - ``record``: that record, as a plain dict.
    - ``epochs``: one dict per epoch (``train_loss``, ``val_loss``, the task's metrics, time, throughput, ...).
    - ``model``: the trained ``nn.Module`` (the object passed to ``fit``, unless a technique rebuilt it).
    - ``best_checkpoint``: the file a ``KeepBest`` callback wrote, or None.
    - ``predict(x)``: the model's outputs on ``x`` in eval mode, batched, without gradients.
    - ``to_pandas()``: the epochs as a DataFrame; ``plot()``: the report's per-epoch chart (time, loss, metric).
    """

    views: ClassVar[ResultViews | None] = None  # experiments/views.py's, set by leantrain/__init__.py

    def __init__(self, record: dict[str, Any], model: nn.Module, best_checkpoint: Path | None = None,
                 output: Any = None):
        super().__init__(record)
        self.model, self.best_checkpoint = model, best_checkpoint
        self._output = output  # picks the tensor from a dict/tuple output (fit's output_key)

    @property
    def record(self) -> dict[str, Any]:
        return dict(self)

    @property
    def epochs(self) -> list[dict[str, Any]]:
        return self["epochs"]

    @property
    def metric(self) -> str:
        """The task's headline metric, e.g. ``val_acc`` or ``val_mse``."""
        return self["run"]["metric"]

    @torch.no_grad()
    def predict(self, x: Any, batch_size: int = 1024) -> torch.Tensor:
        """Outputs for ``x`` (a tensor or numpy array of inputs; or a tuple/dict of them for a model with several
        inputs, then in one batch), on the model's device, in eval mode."""
        from leantrain.data.streaming import to_device
        from leantrain.data.user import as_tensor
        from leantrain.train.adapters import call_model

        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        was_training = self.model.training
        self.model.eval()
        try:
            if isinstance(x, (tuple, list, Mapping)):
                chunks: list[Any] = [to_device(x, device)]
            else:
                inputs = as_tensor(x, "predict: x")
                chunks = [inputs[start : start + batch_size].to(device) for start in range(0, len(inputs), batch_size)]
            outputs = []
            for chunk in chunks:
                out = call_model(self.model, chunk)
                outputs.append(self._output(out) if self._output else out)
            return torch.cat(outputs) if outputs else torch.empty(0)
        finally:
            self.model.train(was_training)

    def to_pandas(self) -> Any:
        """One row per epoch (pandas needed: ``pip install 'leantrain[notebook]'``); ``lt.epochs_frame(result)``."""
        return self._views().frame(self)

    def plot(self, **options: Any) -> Any:
        """The report's per-epoch figure for this run (a matplotlib Figure); ``lt.plot_epochs(result)``."""
        return self._views().figure(self, **options)

    @classmethod
    def _views(cls) -> ResultViews:
        if cls.views is None:  # fit imported from its module, not as leantrain.fit
            raise RuntimeError("FitResult has no views: they are set when leantrain.fit is first used (import "
                               "leantrain; leantrain.fit), or by hand: FitResult.views = "
                               "leantrain.experiments.views.RESULT_VIEWS")
        return cls.views

    def __repr__(self) -> str:
        run, summary = self["run"], self["summary"]
        metric = self.metric
        final = summary.get(f"final_{metric}")
        shown = f"{final:.4g}" if isinstance(final, (int, float)) else final
        last_loss = self.epochs[-1]["val_loss"] if self.epochs else None
        parts = [f"model={run['model']}", f"params={run['params']:,}", f"data={run['data']}", f"task={run['task']}",
                 f"epochs={len(self.epochs)}", f"{metric}={shown}",
                 f"val_loss={last_loss:.4g}" if isinstance(last_loss, float) else "val_loss=None",
                 f"train_time_s={summary.get('train_time_s', 0.0):.2f}"]
        if self.best_checkpoint:
            parts.append(f"best_checkpoint={str(self.best_checkpoint)!r}")
        return f"FitResult({', '.join(parts)})"
