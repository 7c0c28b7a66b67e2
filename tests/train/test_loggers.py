"""--log: TensorBoard event files, CSV and JSON lines that other tools read back; rank 0 only."""
import csv
import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import leantrain as lt
from leantrain.cli import main
from leantrain.config import RunConfig
from leantrain.train.run import execute

TINY = ["--data", "healthcare-sim:n=600", "--epochs", "2", "--batch-size", "64", "--quiet", "--run-name", "r"]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_csv_and_jsonl_hold_every_step_and_epoch_of_the_record(tmp_path):
    assert main(["train", *TINY, "--log", "csv,jsonl", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "r.json").read_text())
    steps = _csv(tmp_path / "r.steps.csv")
    assert len(steps) == sum(e["train_steps"] for e in record["epochs"])
    assert [int(s["step"]) for s in steps] == list(range(1, len(steps) + 1))
    assert {s["lr"] for s in steps} == {"0.001"} and {s["accum_steps"] for s in steps} == {"1"}
    assert all(float(s["grad_norm"]) > 0 and float(s["samples_per_s"]) > 0 and s["loss_scale"] == "" for s in steps)
    # The per-step losses average (weighted by batch size) to the epoch's training loss.
    first = [float(s["loss"]) for s in steps if s["epoch"] == "1"]
    sizes = [64] * (len(first) - 1) + [record["epochs"][0]["train_samples"] - 64 * (len(first) - 1)]
    assert sum(loss * n for loss, n in zip(first, sizes)) / sum(sizes) == pytest.approx(record["epochs"][0]["train_loss"], rel=1e-5)
    epochs = _csv(tmp_path / "r.epochs.csv")
    assert [float(e["val_acc"]) for e in epochs] == [e["val_acc"] for e in record["epochs"]]
    assert [float(e["train_acc"]) for e in epochs] == [e["train_acc"] for e in record["epochs"]]
    lines = [json.loads(line) for line in (tmp_path / "r.log.jsonl").read_text().splitlines()]
    assert [line["kind"] for line in lines].count("step") == len(steps)
    assert [line["val_loss"] for line in lines if line["kind"] == "epoch"] == [e["val_loss"] for e in record["epochs"]]


def test_tensorboard_event_file_parses_back_to_the_logged_values(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["train", *TINY, "--log", "tensorboard,csv", "--out", str(tmp_path)]) == 0
    events = EventAccumulator(str(tmp_path / "tensorboard" / "r"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"step/loss", "step/lr", "step/grad_norm", "step/samples_per_s", "step/accum_steps",
            "epoch/val_acc", "epoch/train_acc", "epoch/train_loss"} <= tags
    steps = _csv(tmp_path / "r.steps.csv")
    logged = events.Scalars("step/loss")
    assert [e.step for e in logged] == [int(s["step"]) for s in steps]
    assert [e.value for e in logged] == pytest.approx([float(s["loss"]) for s in steps], rel=1e-6)  # stored as float32
    record = json.loads((tmp_path / "r.json").read_text())
    assert [e.value for e in events.Scalars("epoch/val_acc")] == pytest.approx([e["val_acc"] for e in record["epochs"]])


def test_fp16_steps_log_the_loss_scale_and_accumulation_k(tmp_path):
    assert main(["train", *TINY, "--precision", "fp16", "--log", "csv", "--out", str(tmp_path)]) == 0
    steps = _csv(tmp_path / "r.steps.csv")
    assert all(float(s["loss_scale"]) > 1 for s in steps)


@pytest.mark.parametrize("value,expected", [
    ("csv,wandb", "log 'wandb' is not one of: tensorboard, csv, jsonl"),
    (",", "log ',' names no logger"),
])
def test_a_bad_log_value_is_one_line_naming_it_and_what_is_allowed(capsys, tmp_path, value, expected):
    assert main(["train", *TINY, "--log", value, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err and not (tmp_path / "o").exists()


def test_logging_without_an_output_folder_is_refused():
    data = lt.data.load("healthcare-sim:n=300")
    with pytest.raises(lt.UsageError, match="give an output folder"):
        lt.fit(torch.nn.Linear(128, 5), data, epochs=1, log="csv")


def _rank(rank: int, folder: Path) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
                       "LEANTRAIN_INIT_METHOD": f"file://{folder / 'rendezvous'}"})
    torch.set_num_threads(1)
    config = RunConfig.from_dict({"data": "healthcare-sim:n=400", "epochs": 1, "batch_size": 32, "parallel": "ddp",
                                  "name": "r", "log": "csv,jsonl", "dist_timeout": 30})
    execute(config, out_dir=folder / f"out{rank}", quiet=True)  # process group destroyed on the way out


@pytest.mark.timeout(90)
def test_only_rank_zero_writes_logs(tmp_path):
    mp.start_processes(_rank, args=(tmp_path,), nprocs=2, start_method="fork", join=True)
    written = {p.name for p in (tmp_path / "out0").iterdir()}
    assert {"r.json", "r.steps.csv", "r.epochs.csv", "r.log.jsonl"} <= written
    assert not (tmp_path / "out1").exists() or not any((tmp_path / "out1").iterdir())
    record = json.loads((tmp_path / "out0" / "r.json").read_text())
    assert len(_csv(tmp_path / "out0" / "r.steps.csv")) == record["epochs"][0]["train_steps"]


def test_a_resumed_run_continues_its_logs_under_the_same_columns_each_step_once(tmp_path):
    from tests.faults.helpers import StopAtStep, tiny_data, tiny_model

    options = {"epochs": 2, "batch_size": 40, "seed": 0, "log": "csv,jsonl", "checkpoint_dir": tmp_path, "name": "r"}
    with pytest.raises(KeyboardInterrupt):
        lt.fit(tiny_model(), tiny_data(), techniques=[StopAtStep(12)], **options)  # 8 steps an epoch: mid-epoch 2
    record = lt.fit(tiny_model(), tiny_data(), resume=True, **options)
    header, *rows = (tmp_path / "r.steps.csv").read_text().splitlines()
    assert header.split(",")[0] == "step" and header not in rows  # one header, the first session's
    steps = [int(row.split(",")[0]) for row in rows]
    # The log is cut back to the checkpoint the resume starts from (step 8, epoch 1's end): each step once.
    assert steps == list(range(1, 17))
    epochs = _csv(tmp_path / "r.epochs.csv")
    assert [int(e["epoch"]) for e in epochs] == [1, 2]
    assert float(epochs[1]["train_acc"]) == record["epochs"][1]["train_acc"]
