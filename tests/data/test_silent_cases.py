"""Issue 25, item 6: cases that trained to a wrong answer with no word, now a clear error or a right result.

(a) whole-number regression targets taken for class labels, (b) a random augmentation read once and frozen,
(d) a batch larger than the training split, (e) one-hot labels given the squeeze advice, (h) ``(dict, y)`` items
refused in memory but taken streamed. (f), the Adam kernels' warm-up, is in tests/tuning/test_adam_warmup.py.
Each test uses only the API that existed before the fix, so each fails on the old code."""
import json
import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import TensorDataset

import leantrain as lt
from leantrain.cli import main
from leantrain.data.batches import DataLoaderBatches, TensorBatches
from leantrain.data.streaming import Stream, StreamBatches

CPU = torch.device("cpu")


def _one_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# --- (a) whole-number regression targets ---------------------------------------------------------------------------


def _diabetes_csv(path):
    """scikit-learn's diabetes with its raw targets: whole numbers 25..346, 214 distinct values in 442 rows."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(scaled=False)
    columns = [f"f{i}" for i in range(bunch.data.shape[1])] + ["progression"]
    np.savetxt(path, np.c_[bunch.data, bunch.target], delimiter=",", header=",".join(columns), comments="")
    return path


def test_whole_number_regression_targets_in_a_csv_without_a_task_are_one_line_naming_both_tasks(tmp_path):
    spec = f"csv:path={_diabetes_csv(tmp_path / 'diabetes.csv')},target=progression"
    with pytest.raises(lt.UsageError) as e:
        lt.data.load(spec)
    message = str(e.value)
    assert "\n" not in message and "task=regression" in message and "task=classification" in message
    assert "214 distinct" in message and "25..346" in message


def test_the_cli_refuses_the_diabetes_csv_without_a_task_before_training(tmp_path, capsys):
    spec = f"csv:path={_diabetes_csv(tmp_path / 'diabetes.csv')},target=progression"
    out = tmp_path / "out"
    assert main(["train", "--model", "mlp", "--data", spec, "--epochs", "1", "--quiet", "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "task=regression" in line and "task=classification" in line
    assert not out.exists()


def test_an_explicit_task_is_taken_as_given(tmp_path):
    spec = f"csv:path={_diabetes_csv(tmp_path / 'diabetes.csv')},target=progression"
    regression = lt.data.load(spec + ",task=regression")
    assert regression.task == "regression" and regression.y_train.shape[1:] == (1,)
    classes = lt.data.load(spec + ",task=classification")  # the user said so: 347 classes, as asked
    assert classes.task == "classification" and classes.num_classes == 347


def test_from_tensors_asks_for_the_task_of_many_valued_integer_targets_and_keeps_label_sets():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=g)
    counts = (50 + 40 * x[:, 0]).round().clamp_min(0).long()  # a count: ~150 distinct values, 2-3 samples each
    with pytest.raises(lt.UsageError, match=r"task='regression'.*task='classification'"):
        lt.data.from_tensors(x, counts)
    assert lt.data.from_tensors(x, counts, task="regression").task == "regression"
    labels = torch.arange(400) % 10
    data = lt.data.from_tensors(x, labels)  # ten classes, 40 samples each: class labels, as before
    assert data.task == "classification" and data.num_classes == 10
    hundred = lt.data.from_tensors(torch.randn(3000, 3, generator=g), torch.arange(3000) % 100)
    assert hundred.task == "classification" and hundred.num_classes == 100  # 30 samples a class, every class used


# --- (b) a data set whose items change between reads ---------------------------------------------------------------


class Augmented(TorchDataset):
    """A random augmentation, as a torchvision transform draws it: each read of an item is a new sample."""

    def __init__(self, n=250, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x[:, 0] > 0).long()
        self.reads = 0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i] + 0.1 * torch.randn(4), self.y[i]


def test_a_randomly_augmented_dataset_is_streamed_so_every_epoch_draws_new_samples():
    source = Augmented()
    with pytest.warns(UserWarning) as caught:
        data = lt.data.from_loader(source)
    (warning,) = caught
    assert "\n" not in str(warning.message) and "stream" in str(warning.message)
    assert data.streams is not None  # read as training goes, not frozen into tensors
    source.reads = 0
    result = lt.fit(nn.Linear(4, 2), data, epochs=3, batch_size=25, lr=0.05)
    assert source.reads >= 3 * 200  # each epoch read its 200 training samples anew (200 reads in all before)
    assert result.epochs[-1]["val_acc"] > 0.8


def test_a_dataset_that_reads_the_same_twice_stays_in_memory_without_a_word():
    x = torch.randn(100, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = lt.data.from_loader(TensorDataset(x, (x[:, 0] > 0).long()))
    assert data.streams is None and len(data.y_train) == 80


def test_looking_for_changing_items_leaves_the_random_streams_alone():
    from leantrain.data.reads import changes_between_reads

    def draws():
        return torch.rand(3).tolist(), random.random(), np.random.rand()

    def seed():
        torch.manual_seed(7), random.seed(7), np.random.seed(7)

    augmented, fixed = Augmented(), TensorDataset(torch.randn(20, 4))
    seed()
    expected = draws()
    seed()
    assert changes_between_reads(augmented) == 0 and changes_between_reads(fixed) is None
    assert draws() == expected


# --- (d) a batch larger than the training split --------------------------------------------------------------------


def test_fit_says_in_one_line_that_a_batch_larger_than_the_training_split_is_one_step_an_epoch(capsys):
    data = lt.data.load("digits")  # 1,797 samples: 1,438 train
    result = lt.fit(nn.Linear(64, 10), data, epochs=1, batch_size=100_000)
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("leantrain: warning: data digits: batch_size 100000 is larger than the training split "
                           "(1438 samples)") and "use batch_size 1438 or less" in line
    assert result.epochs[0]["train_samples"] == 1438  # full-batch training, as asked, now said


def test_the_cli_says_it_in_one_line_too(tmp_path, capsys):
    assert main(["train", "--model", "mlp", "--data", "digits", "--epochs", "1", "--batch-size", "100000",
                 "--quiet", "--out", str(tmp_path / "out")]) == 0
    line = _one_line(capsys.readouterr().err)
    assert "batch_size 100000" in line and "(1438 samples)" in line


def test_a_batch_no_larger_than_the_training_split_trains_without_a_word(capsys):
    x = torch.randn(100, 4)
    result = lt.fit(nn.Linear(4, 2), lt.data.from_tensors(x, (x[:, 0] > 0).long()), epochs=1, batch_size=80)
    assert result.epochs[0]["train_samples"] == 80 and capsys.readouterr().err == ""


@pytest.mark.parametrize("source", ["tensor", "dataloader", "stream"])
def test_rank_0_says_when_the_batch_outgrows_each_ranks_share_of_the_split(source, capsys):
    x, y = torch.randn(100, 4), torch.arange(100) % 2
    make = {"tensor": lambda b, r: TensorBatches(x, y, b, rank=r, world_size=2),
            "dataloader": lambda b, r: DataLoaderBatches(x, y, b, rank=r, world_size=2),
            "stream": lambda b, r: StreamBatches(Stream(TensorDataset(x, y)), b, CPU, rank=r, world_size=2)}[source]
    assert len(make(50, 0)) == 1 and capsys.readouterr().err == ""  # each of 2 ranks takes 50 samples: one batch
    assert len(make(60, 1)) == 1 and capsys.readouterr().err == ""  # rank 1 says nothing
    make(60, 0)
    line = _one_line(capsys.readouterr().err)
    assert "batch_size 60 (per worker) is larger than a worker's share of the training split (50 of 100 samples, " \
           "over 2 workers)" in line
    make(200, 0)  # larger than the whole split: the preflight said so already
    assert capsys.readouterr().err == ""


def test_batch_size_auto_never_chooses_more_than_the_split():
    from leantrain.models import build
    from leantrain.tuning import Measure, resolve
    from leantrain.tuning.choice import Trial

    class Quiet:
        def cores(self):
            return 0.0

    seen = []

    def batch_trials(model, make_optimizer, forward_loss_at, device, candidates, precision):
        seen.extend(candidates)
        return {b: Trial([1.0]) for b in candidates}

    data = lt.data.load("healthcare-sim:n=50")  # 40 training samples, under lr_batch 64
    config = lt.RunConfig(data="healthcare-sim:n=50", batch_size="auto", device="cpu")
    tuned = resolve(config, build(config.model, data), data, CPU, measure=Measure(batch_trials=batch_trials,
                                                                                  cpu_meter=Quiet))
    assert max(seen) <= 40 and tuned.config.batch_size <= 40


# --- (e) one-hot labels --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int64, torch.float32])
def test_one_hot_labels_get_the_argmax_advice(dtype):
    x = torch.randn(200, 4)
    one_hot = nn.functional.one_hot((x[:, 0] > 0).long() + (x[:, 1] > 0).long(), 3).to(dtype)
    with pytest.raises(lt.UsageError) as e:
        lt.fit(nn.Linear(4, 3), lt.data.from_tensors(x, one_hot), epochs=1)
    assert "argmax(1)" in str(e.value) and "squeeze" not in str(e.value) and "\n" not in str(e.value)


def test_per_class_scores_get_the_argmax_advice_not_long():
    x = torch.randn(200, 4)
    scores = torch.softmax(x[:, :3], 1)  # soft labels: y.long() would make them all 0
    with pytest.raises(lt.UsageError, match=r"got \(N, 3\); pass one class index a sample \(y.argmax\(1\)"):
        lt.fit(nn.Linear(4, 3), lt.data.from_tensors(x, scores), epochs=1)


def test_a_column_of_labels_still_gets_the_squeeze_advice():
    x = torch.randn(200, 4)
    with pytest.raises(lt.UsageError, match=r"squeeze\(1\)"):
        lt.fit(nn.Linear(4, 2), lt.data.from_tensors(x, (x[:, :1] > 0).long()), epochs=1)


# --- (h) dict inputs in memory and streamed ------------------------------------------------------------------------


class DictItems(TorchDataset):
    """Items ``({"left": ..., "right": ...}, y)``: a model with two named inputs."""

    def __init__(self, n=300):
        g = torch.Generator().manual_seed(0)
        self.left, self.right = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)
        self.y = (self.left[:, 0] + self.right[:, 1] > 0).long()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"left": self.left[i], "right": self.right[i]}, self.y[i]


class Named(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

    def forward(self, left, right):
        return self.a(left) + self.b(right)


@pytest.mark.parametrize("items", [DictItems, lambda: TensorDatasetOfTuples()])
def test_multi_input_items_train_alike_in_memory_and_streamed(items):
    runs = []
    for stream in (False, True):
        result = lt.fit(Named(), lt.data.from_loader(items(), stream=stream), epochs=2, batch_size=20, lr=0.05)
        runs.append([(e["train_loss"], e["val_loss"], e["val_acc"]) for e in result.epochs])
        assert result["run"]["train_samples"] == 240
    assert runs[0] == runs[1] and runs[0][-1][2] > 0.8


class TensorDatasetOfTuples(DictItems):
    def __getitem__(self, i):
        return (self.left[i], self.right[i]), self.y[i]


def test_a_dict_input_record_names_its_inputs(tmp_path):
    result = lt.fit(Named(), lt.data.from_loader(DictItems()), epochs=1, batch_size=20, checkpoint_dir=tmp_path)
    (path,) = tmp_path.glob("*.json")
    assert set(json.loads(path.read_text())["run"]["data_dtypes"]["x"]) == {"left", "right"}
    assert result.epochs[0]["train_samples"] == 240
