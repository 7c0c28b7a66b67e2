"""Views of one or a few runs' epochs, for notebooks and ``FitResult``: a DataFrame, the report's epoch chart.

``FitResult`` (``train/result.py``) is data; its ``.to_pandas()`` and ``.plot()`` are these views (``RESULT_VIEWS``),
handed to it by ``leantrain/__init__.py``, so that ``train/`` imports nothing from here.
pandas and matplotlib are imported only when a view that needs them is asked for.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from leantrain.errors import UsageError
from leantrain.experiments.tidy import epoch_rows, train_metric_key
from leantrain.train.result import ResultViews

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class Run:
    """One result, normalised: its epochs and what is known of its run (metric, direction, name)."""

    epochs: list[dict[str, Any]]
    run: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        if self.run.get("metric"):
            return str(self.run["metric"])
        found = [m for m in task_metrics() if self.epochs and m in self.epochs[-1]]
        if not found:
            raise UsageError("these epochs hold no known validation metric (val_acc, val_ppl, ...)")
        return found[0]

    @property
    def higher_is_better(self) -> bool:
        return bool(self.run.get("higher_is_better", task_metrics().get(self.metric, True)))

    def final(self, key: str) -> Any:
        return self.epochs[-1].get(key) if self.epochs else None


def as_run(result: Any) -> Run:
    """A record dict, an object with ``.epochs`` (and ``.record`` or ``.run``), or a list of epoch dicts."""
    record = getattr(result, "record", None)
    if isinstance(record, Mapping):
        result = record
    if isinstance(result, Mapping) and "epochs" in result:
        return Run(list(result["epochs"]), dict(result.get("run") or {}))
    if hasattr(result, "epochs"):
        return Run(list(result.epochs), dict(getattr(result, "run", None) or {}))
    if isinstance(result, Sequence) and not isinstance(result, (str, bytes)) and all(isinstance(e, Mapping) for e in result):
        return Run([dict(e) for e in result])
    raise UsageError(f"expected what lt.fit returns, a run record or a list of epoch dicts; got {type(result).__name__}")


def epochs_frame(result: Any) -> Any:
    """One row per epoch (scalar values only), as a ``pandas.DataFrame``; a record's run columns included."""
    try:
        import pandas
    except ImportError:
        raise ModuleNotFoundError("epochs_frame needs pandas: pip install pandas (or 'leantrain[notebook]')") from None
    run = as_run(result)
    return pandas.DataFrame(epoch_rows([{"run": run.run, "epochs": run.epochs}]) if run.run else
                            [{k: v for k, v in e.items() if v is None or isinstance(v, (int, float, str, bool))}
                             for e in run.epochs])


def plot_epochs(results: Any, *, target: float | None = None) -> Figure:
    """The report's epoch chart (time, metric with training accuracy, loss per epoch) for one result or several
    (a list, or a dict label -> result); returns the matplotlib Figure (Jupyter shows it)."""
    from leantrain.experiments.plots import EpochCurves, epoch_figure

    runs = labelled(results)
    first = next(iter(runs.values()))
    metric = first.metric
    train_metric = train_metric_key([e for run in runs.values() for e in run.epochs])
    keys = ("time_s", metric, "val_loss", "train_loss", *([train_metric] if train_metric else []))
    series = {label: {k: [e[k] for e in run.epochs] for k in keys} for label, run in runs.items()}
    return epoch_figure(EpochCurves("", metric, target, series, train_metric))


def labelled(results: Any) -> dict[str, Run]:
    if isinstance(results, Mapping) and "epochs" not in results:
        return {str(k): as_run(v) for k, v in results.items()}
    if isinstance(results, Sequence) and not isinstance(results, (str, bytes)) and results and \
            not all(isinstance(e, Mapping) and "epochs" not in e for e in results):
        runs = [as_run(r) for r in results]
        names = [str(r.run.get("name") or f"run {i}") for i, r in enumerate(runs)]
        if len(set(names)) < len(names):
            names = [f"{i}: {n}" for i, n in enumerate(names)]
        return dict(zip(names, runs))
    return {"run": as_run(results)}


def task_metrics() -> dict[str, bool]:
    from leantrain.tasks import TASKS

    metrics: dict[str, bool] = {}
    for entry in TASKS:
        task = entry.builder()
        metrics[task.metric] = task.higher_is_better
    return metrics


# What FitResult's .to_pandas() and .plot() draw; leantrain/__init__.py hands them to it.
RESULT_VIEWS = ResultViews(frame=epochs_frame, figure=plot_epochs)
