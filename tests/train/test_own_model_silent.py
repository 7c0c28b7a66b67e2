"""Each case the issue found giving a wrong number with no error (issue 16), now an error or a right number.

These use only the API that existed before the fix, so each fails on the old code."""
import pytest
import torch
from torch import nn

import leantrain as lt


def _xy(n=200, outputs=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(n, generator=g)
    return x, y


def test_float_targets_under_the_default_task_are_refused_not_scored_as_zero():
    x, y = _xy()
    with pytest.raises(lt.UsageError, match="task='regression'") as e:
        lt.fit(nn.Linear(4, 1), lt.data.from_tensors(x, y), epochs=1)
    assert "\n" not in str(e.value)


def test_a_flat_target_against_a_column_output_is_refused_not_broadcast():
    x, y = _xy()
    with pytest.raises(lt.UsageError, match="broadcast") as e:
        lt.fit(nn.Linear(4, 1), lt.data.from_tensors(x, y, task="regression"), epochs=1)
    assert "\n" not in str(e.value)


def test_a_flat_target_is_refused_under_reconstruction_too():
    x, y = _xy()
    data = lt.data.from_tensors(x, y, task="regression")
    data.task = "reconstruction"  # the only squared-error task before regression existed
    with pytest.raises(lt.UsageError, match="broadcast"):
        lt.fit(nn.Linear(4, 1), data, epochs=1)


def test_reused_technique_objects_start_every_fit_afresh():
    x, y = _xy()
    data = lt.data.from_tensors(x, (y > 0).long())
    schedule = [lt.WarmupCosine(warmup=0.2)]
    lrs = []
    for _ in range(2):
        torch.manual_seed(0)
        result = lt.fit(nn.Linear(4, 2), data, epochs=3, batch_size=32, lr=0.02, techniques=schedule)
        lrs.append([e["lr"] for e in result["epochs"]])
    assert lrs[0] == lrs[1]


def test_the_record_names_the_users_model_and_data_and_no_placeholder():
    x, y = _xy()
    data = lt.data.from_tensors(x, (y > 0).long())
    run = lt.fit(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), data, epochs=1)["run"]
    assert run["config"]["model"] == "torch.nn.modules.container.Sequential" != "mlp"
    assert run["config"]["data"] == "tensors" and run["data_spec"] != "imagenet-sim"
    assert run["model"] == "Sequential" and run["params"] == 4 * 8 + 8 + 8 * 2 + 2
    assert run["data_shapes"]["x_train"] == [160, 4] and run["data_shapes"]["y_val"] == [40]
    assert run["data_dtypes"] == {"x": "float32", "y": "int64"} and run["task"] == "classification"


def test_two_fits_into_one_checkpoint_dir_keep_both_records_or_refuse(tmp_path):
    x, y = _xy()
    data = lt.data.from_tensors(x, (y > 0).long())
    for width in (8, 16):  # two models, one folder, resume=True as a script rerun would pass
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))
        lt.fit(model, data, epochs=1, checkpoint_dir=tmp_path, resume=True)
    records = sorted(tmp_path.glob("*.json"))
    assert len(records) == 2, records
    before = [r.read_text() for r in records]
    with pytest.raises(lt.UsageError, match="force=True"):  # the same model again does not silently retrain over it
        lt.fit(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), data, epochs=1, lr=1e-2,
               checkpoint_dir=tmp_path, resume=True)
    assert [r.read_text() for r in records] == before
