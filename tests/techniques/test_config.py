"""Technique switches in RunConfig: built by name, validated with one-line errors, and composed through the loop."""
import warnings

import pytest
import torch

import leantrain
from leantrain.config import RunConfig
from leantrain.errors import UsageError
from leantrain.techniques import Technique, from_config
from leantrain.techniques.base import in_hook_order
from leantrain.techniques.compile import Compile


def test_from_config_builds_techniques_each_after_those_it_runs_after():
    config = RunConfig(model="mlp:depth=4", precision="bf16", checkpointing="sqrt", accumulation="adaptive",
                       schedule="warmup-cosine", complexity="match", compile=True, grad_clip=1.0).validated()
    names = [t.name for t in from_config(config)]
    assert sorted(names) == ["accumulation", "checkpointing", "compile", "complexity", "grad_clip", "precision", "schedule"]
    assert names[0] == "complexity"  # it replaces the model and optimizer that everything else touches
    assert names.index("schedule") > names.index("accumulation")  # shapes the lr accumulation scaled
    assert names.index("compile") > names.index("checkpointing")  # compiles the checkpointed model
    assert names.index("grad_clip") > max(names.index("precision"), names.index("accumulation"))  # clips last
    assert from_config(RunConfig().validated()) == []


def test_hook_order_keeps_the_given_order_where_nothing_constrains_it():
    class A(Technique):
        name = "a"

    class B(Technique):
        name = "b"
        runs_after = ("c",)

    class C(Technique):
        name = "c"

    a, b, c = A(), B(), C()
    assert in_hook_order([b, a, c]) == [a, c, b]
    assert in_hook_order([a, b]) == [a, b]  # an absent technique orders nothing
    C.runs_after = ("b",)
    with pytest.raises(ValueError, match="cycle"):
        in_hook_order([b, c])


@pytest.mark.parametrize("changes, fragment", [
    ({"checkpointing": "half"}, "checkpointing 'half'"),
    ({"checkpointing": 0}, "checkpointing 0"),
    ({"accumulation": "fixed"}, "accumulation 'fixed'"),
    ({"schedule": "step"}, "schedule 'step'"),
    ({"warmup": 1.5}, "warmup must be"),
    ({"grad_clip": -1.0}, "grad_clip must be"),
    ({"accum_max": 1}, "accum_max must be"),
    ({"start_width": 64, "max_width": 8}, "start_width"),
    ({"complexity": "match", "model": "other"}, "complexity matching works on the mlp"),
])
def test_bad_technique_settings_are_one_line_usage_errors(changes, fragment):
    with pytest.raises(UsageError, match=fragment) as error:
        RunConfig.from_dict({**RunConfig().to_dict(), **changes})
    assert "\n" not in str(error.value)


def test_technique_keys_read_write_and_copy_like_fields():
    import copy
    import dataclasses
    import pickle

    config = RunConfig(precision="bf16", lr=0.1)
    assert config.precision == "bf16" and config.to_dict()["precision"] == "bf16" and config.to_dict()["lr"] == 0.1
    config.precision = "fp16"
    assert config.technique_options["precision"] == "fp16"
    assert dataclasses.replace(config, lr=0.2).precision == "fp16"
    assert copy.deepcopy(config) == config == pickle.loads(pickle.dumps(config))
    assert RunConfig() != config
    with pytest.raises(TypeError, match="unknown keys: precison"):
        RunConfig(precison="bf16")
    with pytest.raises(AttributeError):
        config.precison  # noqa: B018


def test_checkpointing_count_from_command_line_text_becomes_int():
    assert RunConfig.from_dict({"checkpointing": "4"}).checkpointing == 4
    assert RunConfig.from_dict({"checkpointing": 4}).checkpointing == 4


def test_compile_failure_warns_and_trains_eagerly(monkeypatch):
    def broken_compile(*args, **kwargs):
        def fails(*a, **k):
            raise RuntimeError("no compiler here")
        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    g = torch.Generator().manual_seed(0)
    data = leantrain.data.from_tensors(torch.randn(100, 4, generator=g), torch.randint(0, 2, (100,), generator=g))
    technique = Compile()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = leantrain.fit(torch.nn.Linear(4, 2), data, epochs=1, batch_size=32, device="cpu", techniques=[technique])
    assert any("eager mode" in str(w.message) for w in caught)
    assert record["epochs"][0]["compiled"] is False
    assert record["epochs"][0]["train_loss"] == record["epochs"][0]["train_loss"]  # trained: a number, not NaN


def test_train_cli_switches_techniques_on_by_flag(tmp_path):
    from leantrain.cli import main

    code = main(["train", "--model", "mlp:depth=4,hidden=16", "--data", "healthcare-sim:n=300", "--epochs", "1",
                 "--precision", "bf16", "--checkpointing", "sqrt", "--accumulation", "adaptive",
                 "--schedule", "warmup-cosine", "--grad-clip", "1.0", "--device", "cpu", "--quiet", "--out", str(tmp_path)])
    assert code == 0
    import json

    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["run"]["techniques"] == ["accum-adaptive2-16", "ckpt-sqrt", "bf16", "clip1", "warmup0.05-cosine"]
    assert record["epochs"][0]["checkpointed_modules"] == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert record["epochs"][0]["checkpoint_segments"] == [["blocks.0", "blocks.1"], ["blocks.2", "blocks.3"]]  # √4 = 2
