"""Validation data that cannot judge a run are refused before anything is written: inf/NaN in them (F7), or too
few samples (a 3-sample data set validated on 1 sample reported accuracy 1.0). Streamed validation data are read
only at each epoch's end: a non-finite validation loss there stops the run (exit 3), as one from a diverged model
does."""
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import leantrain as lt
from leantrain.data import from_loader, from_tensors
from leantrain.errors import TrainingDiverged, UsageError
from leantrain.train.preflight import MIN_VAL_SAMPLES
from tests.faults.helpers import cli, one_line_error, tiny_data, tiny_model

pytestmark = pytest.mark.timeout(60)
OPTIONS = {"epochs": 1, "batch_size": 16, "lr": 5e-3, "device": "cpu", "seed": 0}


def _csv(path, rows, nan_row=None, column=0):
    """A CSV of ``rows`` samples (three features, an integer label); ``nan_row`` holds NaN in ``column``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 3, generator=g)
    y = (x.sum(1) > 0).long()
    lines = ["a,b,c,label"]
    for i in range(rows):
        values = [f"{v:.4f}" for v in x[i].tolist()] + [str(int(y[i]))]
        if i == nan_row:
            values[column] = "nan"
        lines.append(",".join(values))
    path.write_text("\n".join(lines) + "\n")
    return path


def _split_rows(rows, val_fraction=0.2, seed=0):
    """(first training row, first validation row) of the CSV reader's seeded split (data/dataset.py)."""
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed)).tolist()
    n_train = round(rows * (1 - val_fraction))
    return order[0], order[n_train]


def _train(csv, out):
    return cli("train", "--model", "mlp:hidden=8", "--data", f"csv:path={csv},target=label",
               "--epochs", "1", "--batch-size", "8", "--seed", "0", "--out", str(out), "--quiet")


def test_nan_in_one_validation_row_is_one_line_exit_2_and_nothing_written(tmp_path):
    _, val_row = _split_rows(60)
    result = _train(_csv(tmp_path / "d.csv", 60, nan_row=val_row, column=1), tmp_path / "out")
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert "data d: the validation split holds non-finite values (inf/NaN): 1 in the inputs" in line
    assert not (tmp_path / "out").exists()  # refused before the folder was made


def test_a_nan_regression_target_in_validation_is_refused_by_fit():
    x = torch.randn(60, 3, generator=torch.Generator().manual_seed(0))
    y = x.sum(1, keepdim=True)
    data = from_tensors(x, y, task="regression")
    data.y_val[2, 0] = math.nan
    with pytest.raises(UsageError, match="1 in the targets"):
        lt.fit(nn.Linear(3, 1), data, **OPTIONS)


def test_nan_in_a_training_row_is_still_the_guards_to_stop(tmp_path):
    train_row, _ = _split_rows(60)
    result = _train(_csv(tmp_path / "d.csv", 60, nan_row=train_row), tmp_path / "out")
    assert result.returncode == 3 and "non-finite" in one_line_error(result.stderr)


def test_inf_in_validation_tensors_is_refused_by_fit_with_the_counts():
    data = tiny_data()
    data.x_val[3, 2], data.x_val[5, 0] = math.inf, -math.inf
    with pytest.raises(UsageError, match=r"validation split holds non-finite values \(inf/NaN\): 2 in the inputs"):
        lt.fit(tiny_model(), data, **OPTIONS)


def _streamed(val_x, val_y):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(320, 12, generator=g)
    y = (x @ torch.randn(12, 8, generator=g)).argmax(1)
    return from_loader(TensorDataset(x, y), TensorDataset(val_x, val_y), stream=True)


def test_nan_deep_in_streamed_validation_data_stops_at_the_epochs_end_with_exit_3_semantics(tmp_path):
    x, y = tiny_data().x_val.repeat(2, 1), tiny_data().y_val.repeat(2)  # 160 samples: past the preflight's batch
    x[150, 4] = math.nan
    with pytest.raises(TrainingDiverged, match=r"validation loss became non-finite \(inf/NaN\) in epoch 1"):
        lt.fit(tiny_model(), _streamed(x, y), checkpoint_dir=tmp_path, **OPTIONS)
    assert not list(tmp_path.glob("*.json"))  # no NaN record


def test_a_short_streamed_validation_split_is_checked_whole_before_the_run():
    x, y = tiny_data().x_val[:20].clone(), tiny_data().y_val[:20]
    x[7, 1] = math.nan
    with pytest.raises(UsageError, match="1 in the inputs"):
        lt.fit(tiny_model(), _streamed(x, y), **OPTIONS)


class NanWhenEvaluated(nn.Module):
    """Trains normally; its validation outputs are NaN (a model diverging on finite data)."""

    def __init__(self):
        super().__init__()
        self.model = tiny_model()

    def forward(self, x):
        out = self.model(x)
        return out if self.training else out * math.nan


def test_a_nan_validation_loss_on_finite_data_stops_the_run_and_records_nothing(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"validation loss became non-finite .* in epoch 1"):
        lt.fit(NanWhenEvaluated(), tiny_data(), checkpoint_dir=tmp_path, **OPTIONS)
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*.ckpt"))


def test_a_three_sample_data_set_is_one_line_exit_2_naming_the_count(tmp_path):
    result = _train(_csv(tmp_path / "d.csv", 3), tmp_path / "out")
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert f"the validation split has 1 sample(s), fewer than {MIN_VAL_SAMPLES}" in line and "val_fraction" in line
    assert not (tmp_path / "out").exists()


def test_too_few_validation_samples_per_class_with_a_class_missing_is_refused():
    x = torch.randn(60, 12, generator=torch.Generator().manual_seed(0))
    y = torch.arange(60) % 10  # 10 classes; the seeded split leaves 12 validation samples, class 9 among none
    with pytest.raises(UsageError, match=r"has 12 samples for 10 classes .* none of class 9"):
        lt.fit(tiny_model(classes=10), from_tensors(x, y), **OPTIONS)


def test_small_validation_splits_that_can_judge_a_run_still_train():
    # The suite's smallest deliberate split: 40 samples, 8 validated, 2 classes.
    x = torch.randn(40, 12, generator=torch.Generator().manual_seed(0))
    record = lt.fit(tiny_model(classes=2), from_tensors(x, (x[:, 0] > 0).long()), **OPTIONS)
    assert record["epochs"][0]["val_samples"] == MIN_VAL_SAMPLES
    # A class missing from validation is fine where there are enough samples per class (80 for 8 classes).
    data = tiny_data()
    assert set(data.y_train.tolist()) - set(data.y_val.tolist())
    assert math.isfinite(lt.fit(tiny_model(), data, **OPTIONS)["epochs"][0]["val_loss"])
