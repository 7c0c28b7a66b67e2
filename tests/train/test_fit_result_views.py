"""FitResult is data; its views (the epochs as a DataFrame, the report's chart) are experiments/views.py's."""
import pytest
from torch import nn

import leantrain as lt
from leantrain.experiments import views
from leantrain.train.result import FitResult

RECORD = {"schema": 1, "run": {"name": "r", "metric": "val_acc", "model": "Linear", "params": 6, "data": "d",
                               "task": "classification"},
          "epochs": [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_acc": 0.5 + e / 10, "time_s": 1.0}
                     for e in (1, 2)],
          "summary": {"final_val_acc": 0.7, "train_time_s": 2.0}}


def test_import_leantrain_hands_fit_result_the_experiments_views():
    assert lt.FitResult is FitResult and FitResult.views is views.RESULT_VIEWS
    assert (FitResult.views.frame, FitResult.views.figure) == (views.epochs_frame, views.plot_epochs)


def test_to_pandas_and_plot_draw_a_records_epochs_without_training():
    pytest.importorskip("pandas")
    result = FitResult(RECORD, nn.Linear(2, 2))
    assert result.to_pandas().equals(lt.epochs_frame(result))
    assert type(result.plot()).__name__ == "Figure"
