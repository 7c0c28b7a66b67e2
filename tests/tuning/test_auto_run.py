"""auto end to end: the CLI run, the record, reproducibility of a probed run, and resume with the saved choice."""
import json

import pytest
import torch

import leantrain as lt
from leantrain.cli import main
from leantrain.models import build
from leantrain.techniques import Technique
from leantrain.tuning import cache

TIMING_KEYS = {"time_s", "val_time_s", "train_steps_per_s", "val_steps_per_s", "overall_steps_per_s",
               "samples_per_s", "train_tokens_per_s", "val_tokens_per_s", "overall_tokens_per_s",
               "foreign_cpu_cores", "utilisation"}


def _untimed(epochs):
    return [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in epochs]


def test_train_precision_auto_from_the_command_line_records_its_choice(tmp_path, capsys):
    argv = ["train", "--data", "healthcare-sim:n=400", "--epochs", "1", "--batch-size", "64", "--device", "cpu",
            "--precision", "auto", "--optimizer", "auto-adam", "--threads", "auto", "--out", str(tmp_path)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "precision auto -> " in err and "optimizer auto-adam -> " in err and "threads auto -> " in err
    (path,) = tmp_path.glob("*.json")
    record = json.loads(path.read_text())
    tuned = record["run"]["autotune"]
    assert record["run"]["config"]["precision"] == "auto"  # the config says what was asked
    assert tuned["precision"]["choice"] in ("fp32", "bf16", "fp16")  # the record says what was chosen
    assert set(tuned["precision"]["trials"]) == {"fp32", "bf16", "fp16"}
    assert tuned["optimizer"]["choice"] in ("adam", "foreach-adam", "fused-adam")
    assert record["env"]["cpu_capability"] == tuned["cpu_capability"]
    assert {"fp32", "bf16", "fp16"} == record["env"]["peak_flops_by_dtype"].keys()
    assert {"cpu_model", "cpu_flags", "cpu_cores"} <= record["env"].keys()


def test_a_probed_run_is_bitwise_the_run_with_its_choice_forced():
    data = lt.data.load("healthcare-sim:n=600")
    options = dict(epochs=2, batch_size=64, device="cpu", seed=3)
    torch.manual_seed(0)
    auto = lt.fit(build("mlp:dropout=0.2", data), data, precision="auto", **options)
    chosen = auto["run"]["autotune"]["precision"]["choice"]
    torch.manual_seed(0)
    forced = lt.fit(build("mlp:dropout=0.2", data), data, precision=chosen, **options)
    assert _untimed(auto["epochs"]) == _untimed(forced["epochs"])


def test_auto_precision_and_a_precision_technique_together_are_refused():
    data = lt.data.load("healthcare-sim:n=300")
    with pytest.raises(lt.UsageError, match="precision given both"):
        lt.fit(build("mlp", data), data, precision="auto", techniques=[lt.MixedPrecision("bf16")])


class Crash(Technique):
    def before_step(self, state):
        if state.epoch == 1:
            raise KeyboardInterrupt


def test_resume_keeps_the_choice_in_the_checkpoint_even_when_the_cache_now_says_otherwise(tmp_path, monkeypatch):
    data = lt.data.load("healthcare-sim:n=600")
    options = dict(epochs=2, batch_size=64, device="cpu", precision="auto", seed=1)
    cached = lambda choice: lambda key: {"choice": choice, "trials": {}, "rejected": {}}  # noqa: E731
    monkeypatch.setattr(cache, "load", cached("bf16"))  # what this machine measured before
    torch.manual_seed(0)
    whole = lt.fit(build("mlp", data), data, checkpoint_dir=tmp_path / "whole", **options)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        lt.fit(build("mlp", data), data, checkpoint_dir=tmp_path / "part", techniques=[Crash()], **options)

    monkeypatch.setattr(cache, "load", cached("fp16"))  # the machine "changed its mind" since
    torch.manual_seed(0)
    resumed = lt.fit(build("mlp", data), data, checkpoint_dir=tmp_path / "part", resume=True, **options)
    assert whole["run"]["autotune"]["precision"]["choice"] == "bf16"
    assert resumed["run"]["autotune"]["precision"]["choice"] == "bf16"
    assert resumed["run"]["autotune"]["precision"]["source"] == "checkpoint"
    assert _untimed(resumed["epochs"]) == _untimed(whole["epochs"])
