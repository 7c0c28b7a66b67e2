"""The CLI and experiment files on a user's own files and model class (issue 16): ``--data csv:/npy:/pt:``
and ``--model module:Class[:k=v]``."""
import json

import numpy as np
import pytest
import torch
from torch import nn

import leantrain as lt
from leantrain.cli import main
from leantrain.experiments.runner import load_experiment, run_experiment


class Net(nn.Module):
    """A user's model, defined here and named on the command line as ``<this module>:Net``."""

    def __init__(self, in_features: int, hidden=16, outputs=1):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, outputs))

    def forward(self, x):
        return self.body(x)


class SizedFromData(nn.Module):
    """A constructor taking ``data`` is given the run's Dataset."""

    def __init__(self, data, hidden=8):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(data.input_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, data.num_classes))

    def forward(self, x):
        return self.body(x)


class DictOut(nn.Module):
    """A Hugging Face-like model: the scores under ``logits`` of a dict, beside other outputs."""

    def __init__(self, data, as_tuple=False):
        super().__init__()
        self.head, self.as_tuple = nn.Linear(data.input_shape[0], data.num_classes), as_tuple

    def forward(self, x):
        logits = self.head(x)
        return (logits, x) if self.as_tuple else {"logits": logits, "hidden": x}


HERE = __name__  # the module name pytest imported this file under


def _problem(n=400, seed=0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 3))
    return x, x @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.1 * g.normal(size=n)


def _record(out):
    (path,) = out.glob("*.json")
    return json.loads(path.read_text())


def test_a_csv_file_trains_a_user_model_class_from_the_command_line(tmp_path):
    x, y = _problem()
    csv = tmp_path / "houses.csv"
    np.savetxt(csv, np.c_[x, y], delimiter=",", header="a,b,c,price", comments="")
    spec = f"csv:path={csv},target=price,task=regression"
    data = lt.data.load(spec)  # round trip: what the CLI reads is what was written
    assert torch.allclose(torch.cat([data.x_train, data.x_val]).sum(0), torch.tensor(x.sum(0), dtype=torch.float32), atol=1e-3)
    assert data.y_train.shape == (320, 1) and data.task == "regression"
    out = tmp_path / "out"
    assert main(["train", "--model", f"{HERE}:Net:in_features=3,hidden=32", "--data", spec, "--epochs", "40",
                 "--lr", "0.01", "--batch-size", "32", "--out", str(out), "--quiet"]) == 0
    record = _record(out)
    assert record["run"]["task"] == "regression" and record["run"]["params"] == 3 * 32 + 32 + 32 + 1
    assert record["run"]["config"]["model"] == f"{HERE}:Net:in_features=3,hidden=32"
    assert record["epochs"][-1]["val_r2"] > 0.97 and record["epochs"][-1]["val_mse"] < 0.2


def test_npy_and_pt_files_train_from_the_command_line_and_give_the_same_run(tmp_path):
    x, y = _problem()
    labels = (y > 0).astype(np.int64)
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    np.save(tmp_path / "y.npy", labels)
    torch.save({"x": torch.tensor(x, dtype=torch.float32), "y": torch.tensor(labels)}, tmp_path / "d.pt")
    losses = []
    for spec in (f"npy:x={tmp_path / 'x.npy'},y={tmp_path / 'y.npy'}", f"pt:path={tmp_path / 'd.pt'}"):
        out = tmp_path / spec[:3]
        assert main(["train", "--model", f"{HERE}:SizedFromData", "--data", spec, "--epochs", "5", "--lr", "0.02",
                     "--out", str(out), "--quiet"]) == 0
        record = _record(out)
        assert record["run"]["train_samples"] == 320 and record["epochs"][-1]["val_acc"] > 0.85
        losses.append([e["train_loss"] for e in record["epochs"]])
    assert losses[0] == losses[1]


def test_an_experiment_file_takes_user_files_and_models(tmp_path):
    x, y = _problem()
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    np.save(tmp_path / "y.npy", y.astype(np.float32)[:, None])
    toml = tmp_path / "mine.toml"
    toml.write_text(f"""
[experiment]
name = "mine"
baseline = "small"

[defaults]
epochs = 2
model = "{HERE}:Net:in_features=3"

[[cases]]
data = "npy:x={tmp_path / 'x.npy'},y={tmp_path / 'y.npy'},task=regression"

[recipes.small]
batch_size = 32

[recipes.large]
batch_size = 128
""")
    run_experiment(load_experiment(toml), tmp_path / "results", quiet=True)
    records = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*.json")]
    assert len(records) == 2 and all(r["run"]["metric"] == "val_mse" for r in records)


@pytest.mark.parametrize("argv,expected", [
    (["--model", f"{__name__}:Nett:in_features=3"], "has no model 'Nett'; its nn.Module classes: DictOut, Net, SizedFromData"),
    (["--model", "no_such_module_xyz:Net"], "cannot import module 'no_such_module_xyz'"),
    (["--model", f"{__name__}:Net:in_featurez=3"], "takes no option 'in_featurez'"),
    (["--model", f"{__name__}:Net"], "missing 1 required positional argument: 'in_features'"),
    (["--data", "csv:path=nope.csv,target=y"], "path='nope.csv' is not a file"),
    (["--data", "npy:x=a.npy"], "is not a file"),
])
def test_a_bad_user_model_or_file_is_one_line(tmp_path, capsys, argv, expected):
    x, y = _problem(n=50)
    np.savetxt(tmp_path / "d.csv", np.c_[x, y], delimiter=",", header="a,b,c,y", comments="")
    flags = {"--data": f"csv:path={tmp_path / 'd.csv'},target=y,task=regression",
             "--model": f"{__name__}:Net:in_features=3", "--epochs": "1", "--out": str(tmp_path / "out"),
             **dict(zip(argv[::2], argv[1::2]))}
    code = main(["train", "--quiet", *(item for pair in flags.items() for item in pair)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and expected in err, err
    assert not (tmp_path / "out").exists()


def test_fractional_targets_under_classification_name_task_regression(tmp_path, capsys):
    x, y = _problem(n=50)
    np.savetxt(tmp_path / "d.csv", np.c_[x, y], delimiter=",", header="a,b,c,y", comments="")
    assert main(["train", "--data", f"csv:path={tmp_path / 'd.csv'},target=y", "--quiet", "--out", str(tmp_path)]) == 2
    assert "add task=regression" in capsys.readouterr().err


def test_a_model_module_in_the_current_folder_is_found_as_the_console_script_runs(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_models_here.py").write_text(
        "from torch import nn\n\nclass Tiny(nn.Module):\n    def __init__(self, width=4):\n        super().__init__()\n"
        "        self.f = nn.Linear(3, width)\n\n    def forward(self, x):\n        return self.f(x)\n")
    x, y = _problem(n=60)
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    np.save(tmp_path / "y.npy", (y > 0).astype(np.int64))
    monkeypatch.chdir(tmp_path)
    # The installed `leantrain` script's sys.path holds its bin folder, not the current folder.
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    assert main(["train", "--model", "my_models_here:Tiny:width=2", "--data", "npy:x=x.npy,y=y.npy", "--epochs", "1",
                 "--quiet", "--out", "out"]) == 0, capsys.readouterr().err
    assert _record(tmp_path / "out")["run"]["params"] == 3 * 2 + 2


@pytest.mark.parametrize("model, key", [("DictOut", "logits"), ("DictOut:as_tuple=true", "0")])
def test_output_key_picks_the_tensor_the_loss_takes_from_the_command_line(tmp_path, capsys, model, key):
    argv = ["train", "--model", f"{HERE}:{model}", "--data", "healthcare-sim:n=300", "--epochs", "1", "--device", "cpu",
            "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "without")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"--output-key {'logits' if key == 'logits' else '0'} on the command line" in err
    assert not (tmp_path / "without").exists()
    assert main([*argv, "--output-key", key, "--out", str(tmp_path / "with")]) == 0
    assert _record(tmp_path / "with")["epochs"][0]["val_acc"] is not None
