"""Divergence is never silent: inf/NaN in the loss, the gradients or the inputs stops the run (or skips the step)."""
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import leantrain as lt
from leantrain.errors import TrainingDiverged
from leantrain.techniques import MixedPrecision, Technique
from leantrain.train import checkpoint
from leantrain.train.run_identity import resume_checkpoint
from tests.faults.helpers import cli, one_line_error, tiny_data, tiny_model

pytestmark = pytest.mark.timeout(60)
OPTIONS = {"epochs": 2, "batch_size": 16, "lr": 5e-3, "device": "cpu", "seed": 0}


class PoisonGrads(Technique):
    """Writes ``value`` into the first gradient after the backward of optimizer steps ``steps`` (1-based)."""

    name = "poison-grads"

    def __init__(self, steps, value=math.nan):
        self.steps, self.value = set(steps), value

    def after_micro_backward(self, state, micro_index):
        if state.step + 1 in self.steps:
            next(p for p in state.model.parameters() if p.grad is not None).grad.view(-1)[0] = self.value


class PoisonedLoss(nn.Module):
    """Wraps a model; its training forward ``calls`` (1-based) return logits times ``factor`` (NaN, or a spike)."""

    def __init__(self, model, calls, factor=math.nan):
        super().__init__()
        self.model, self.calls, self.factor, self.count = model, set(calls), factor, 0

    def forward(self, x):
        out = self.model(x)
        if self.training:
            self.count += 1
            if self.count in self.calls:
                return out * self.factor
        return out


def test_a_diverging_lr_stops_with_one_line_naming_step_and_epoch_and_exit_3(tmp_path):
    result = cli("train", "--model", "mlp", "--data", "healthcare-sim:n=600", "--optimizer", "sgd",
                           "--lr", "1e6", "--epochs", "2", "--out", str(tmp_path), "--quiet")
    assert result.returncode == 3
    line = one_line_error(result.stderr)
    assert "non-finite" in line and "at step" in line and "(epoch 1)" in line
    assert not list(tmp_path.glob("*.json"))  # no NaN record written


def test_nan_in_the_gradients_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # On the CPU the losses are kept and read before each checkpoint, the gradients are not: step 8's NaN gradient
    # reaches the weights, step 9's loss is the first bad one, and the check before step 9's checkpoint stops the run.
    with pytest.raises(TrainingDiverged, match=r"at step 9 \(epoch 1\).*last good checkpoint is kept"):
        lt.fit(tiny_model(), tiny_data(), techniques=[PoisonGrads({8})], checkpoint_dir=tmp_path,
               checkpoint_every="3", **OPTIONS)
    saved = checkpoint.load(resume_checkpoint(tmp_path, None))
    assert saved["step"] == 6 and all(torch.isfinite(t).all() for t in saved["model"].values())
    resumed = lt.fit(tiny_model(), tiny_data(), checkpoint_dir=tmp_path, checkpoint_every="3", resume=True, **OPTIONS)
    assert math.isfinite(resumed["epochs"][-1]["train_loss"])  # the kept checkpoint is good: training goes on


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_inf_or_nan_gradients_stop_the_run_at_the_next_step(value, tmp_path):
    with pytest.raises(TrainingDiverged, match=r"at step 4 \(epoch 1\)"):
        lt.fit(tiny_model(), tiny_data(), techniques=[PoisonGrads({3}, value)], checkpoint_dir=tmp_path, **OPTIONS)
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.json"))  # nothing of the bad step saved


class PoisonSpareWeight(Technique):
    """After optimizer step ``step``, writes NaN into a weight no forward reads (an embedding row no batch has
    looked up yet, say): the loss stays finite."""

    name = "poison-spare-weight"

    def __init__(self, step):
        self.step = step

    def after_optimizer_step(self, state):
        if state.step == self.step:
            with torch.no_grad():
                state.model.spare.fill_(math.nan)


class WithSpareWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.model, self.spare = tiny_model(), nn.Parameter(torch.zeros(3))

    def forward(self, x):
        return self.model(x)


def test_non_finite_weights_the_loss_never_reads_are_found_before_anything_is_saved(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"weights became non-finite.* by step 20 \(epoch 1\)"):
        lt.fit(WithSpareWeight(), tiny_data(), techniques=[PoisonSpareWeight(2)], checkpoint_dir=tmp_path, **OPTIONS)
    assert not list(tmp_path.rglob("*.pt"))  # the epoch end's check ran before its checkpoint
    # The check every 32 steps (at step 32) reads the losses only: these weights are found at the epoch's end.
    with pytest.raises(TrainingDiverged, match=r"weights became non-finite.* by step 40 \(epoch 2\)"):
        lt.fit(WithSpareWeight(), tiny_data(), techniques=[PoisonSpareWeight(21)], **OPTIONS)


def test_a_nan_loss_stops_the_run():
    with pytest.raises(TrainingDiverged, match=r"at step 4 \(epoch 1\)"):
        lt.fit(PoisonedLoss(tiny_model(), {4}), tiny_data(), **OPTIONS)


def test_nan_in_the_input_data_stops_the_run():
    data = tiny_data()
    data.x_train[37, 3] = math.nan
    with pytest.raises(TrainingDiverged, match="non-finite"):
        lt.fit(tiny_model(), data, **{**OPTIONS, "epochs": 1})


def test_skip_mode_leaves_bad_steps_out_and_counts_them():
    model = tiny_model()
    record = lt.fit(model, tiny_data(), techniques=[PoisonGrads({3, 25})], on_nonfinite="skip", **OPTIONS)
    assert [e["nonfinite_skipped_steps"] for e in record["epochs"]] == [1, 1]  # each epoch's own count
    assert all(math.isfinite(e["train_loss"]) for e in record["epochs"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fp16_overflow_is_the_scalers_to_skip_and_count_not_the_guards():
    record = lt.fit(tiny_model(), tiny_data(), techniques=[MixedPrecision("fp16"), PoisonGrads({3}, math.inf)],
                    on_nonfinite="skip", **OPTIONS)
    first = record["epochs"][0]
    assert first["skipped_steps"] >= 1 and first["nonfinite_skipped_steps"] == 0  # counted once, by the scaler
    # In stop mode too, an overflowing fp16 step is routine (the scale comes down), not divergence.
    record = lt.fit(tiny_model(), tiny_data(), techniques=[MixedPrecision("fp16"), PoisonGrads({3}, math.inf)], **OPTIONS)
    assert record["epochs"][0]["skipped_steps"] >= 1


def test_a_nan_loss_under_fp16_still_stops():
    with pytest.raises(TrainingDiverged, match=r"at step 2 "):
        lt.fit(PoisonedLoss(tiny_model(), {2}), tiny_data(), techniques=[MixedPrecision("fp16")], **OPTIONS)


def test_a_loss_spike_is_flagged_in_the_epoch_record():
    record = lt.fit(PoisonedLoss(tiny_model(), {30}, factor=40.0), tiny_data(), **OPTIONS)
    assert record["epochs"][0]["loss_spikes"] == [] and record["epochs"][1]["loss_spikes"] == [30]


def test_the_default_experiments_cases_raise_no_spike(tmp_path):
    """The default experiment's three cases with the baseline recipe (batch 64: enough steps for the rolling
    window; the lean recipe's batches of 2048 give too few), on reduced data: a clean run must not cry wolf."""
    from leantrain.experiments.runner import load_experiment
    from leantrain.train.run import execute

    experiment = load_experiment(Path(__file__).resolve().parents[2] / "experiments" / "default.toml")
    runs = [r for r in experiment.runs if r.recipe == experiment.baseline]
    assert len(runs) == 3
    for planned in runs:
        config = planned.config.replace(data=f"{planned.config.data}:n=2000", epochs=2)
        record = execute(config, out_dir=tmp_path, quiet=True)
        assert sum(e["train_steps"] for e in record["epochs"]) > 40
        assert all(e["loss_spikes"] == [] for e in record["epochs"]), config.data


def test_a_bad_gradient_on_a_checkpoint_step_is_caught_before_the_checkpoint_is_written(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"weights became non-finite.* by step 6 \(epoch 1\)"):
        lt.fit(tiny_model(), tiny_data(), techniques=[PoisonGrads({6})], checkpoint_dir=tmp_path,
               checkpoint_every="3", **OPTIONS)
    saved = checkpoint.load(resume_checkpoint(tmp_path, None))
    assert saved["step"] == 3 and all(torch.isfinite(t).all() for t in saved["model"].values())
