"""Notebook helpers: lt.compare, lt.epochs_frame, lt.plot_epochs on what lt.fit returns (or epoch lists)."""
import sys
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import leantrain as lt


def _fit(batch_size, **options):
    torch.manual_seed(0)
    data = lt.data.load("healthcare-sim:n=800", seed=0)
    return lt.fit(nn.Sequential(nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 5)), data, epochs=2,
                  batch_size=batch_size, lr=1e-2, **options)


@pytest.fixture(scope="module")
def two():
    return _fit(32), _fit(128)


@dataclass
class Result:
    """Test double for a result object: epochs as a list of dicts, plus the run's facts."""

    epochs: list
    run: dict


def test_compare_puts_the_baseline_first_and_divides_its_times_by_each_runs(two):
    base, big = two
    table = lt.compare({"small batch": base, "big batch": big})
    rows = {r["run"]: r for r in table.rows}
    assert list(rows) == ["small batch", "big batch"] and rows["small batch"]["speedup_per_epoch"] == 1.0
    mean = lambda rec: sum(e["time_s"] for e in rec["epochs"]) / 2  # noqa: E731
    assert rows["big batch"]["speedup_per_epoch"] == pytest.approx(mean(base) / mean(big))
    assert table.target == pytest.approx(base["summary"]["final_val_acc"] - 0.005)
    delta = big["summary"]["final_val_acc"] - base["summary"]["final_val_acc"]
    assert rows["big batch"]["quality"].startswith(f"{delta:+.4f} (")
    text = str(table)
    assert text.splitlines()[0].startswith("| run |") and "±0.5%" in text and table._repr_markdown_() == text


def test_compare_takes_epoch_lists_and_result_objects_alike(two):
    base, big = two
    from_lists = lt.compare([base["epochs"], big["epochs"]], baseline="run 1")
    from_objects = lt.compare([Result(base["epochs"], base["run"]), Result(big["epochs"], big["run"])])
    assert [r["run"] for r in from_lists.rows] == ["run 1", "run 0"] and from_lists.metric == "val_acc"
    assert [r["speedup_per_epoch"] for r in from_objects.rows][0] == 1.0
    with pytest.raises(lt.UsageError, match="at least two"):
        lt.compare([base])
    with pytest.raises(lt.UsageError, match="baseline 'x' is not one of"):
        lt.compare([base, big], baseline="x")


def test_epochs_frame_has_a_row_per_epoch_with_the_training_accuracy(two):
    pytest.importorskip("pandas")
    frame = lt.epochs_frame(two[0])
    assert list(frame["epoch"]) == [1, 2]
    assert list(frame["train_acc"]) == [e["train_acc"] for e in two[0]["epochs"]]
    assert set(frame["run"]) == {two[0]["run"]["name"]}


def test_epochs_frame_without_pandas_says_what_to_install(two, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(ModuleNotFoundError, match="pip install pandas"):
        lt.epochs_frame(two[0])


def test_plot_epochs_draws_time_accuracy_with_training_accuracy_and_loss(two):
    figure = lt.plot_epochs({"a": two[0], "b": two[1]})
    time_ax, metric_ax, loss_ax = figure.axes[:3]
    labels = [line.get_label() for line in metric_ax.get_lines()]
    assert labels == ["a val_acc", "a train_acc", "b val_acc", "b train_acc"]
    assert list(metric_ax.get_lines()[1].get_ydata()) == [e["train_acc"] for e in two[0]["epochs"]]
    assert len(time_ax.get_lines()) == 2 and len(loss_ax.get_lines()) == 4
