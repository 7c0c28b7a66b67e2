"""``--on-nonfinite skip`` is for rare bad batches: an epoch that skipped more than half its steps is divergence and
stops the run (exit 3, one line); ``nonfinite_skipped_steps`` is each epoch's own count, continued by a mid-epoch
resume (F7: 146 of 150 steps skipped at --lr 1e6 without a word, and counts of 46, 96, 146)."""
import math
import re

import pytest

import leantrain as lt
from leantrain.errors import TrainingDiverged
from leantrain.techniques import Technique
from tests.faults.helpers import StopAtStep, cli, one_line_error, tiny_data, tiny_model, untimed

pytestmark = pytest.mark.timeout(60)
# 320 training samples / 16: 20 steps an epoch.
OPTIONS = {"epochs": 2, "batch_size": 16, "lr": 5e-3, "device": "cpu", "seed": 0, "on_nonfinite": "skip"}


class PoisonGrads(Technique):
    """Writes NaN into the first gradient after the backward of optimizer steps ``steps`` (1-based)."""

    name = "poison-grads"

    def __init__(self, steps):
        self.steps = set(steps)

    def after_micro_backward(self, state, micro_index):
        if state.step + 1 in self.steps:
            next(p for p in state.model.parameters() if p.grad is not None).grad.view(-1)[0] = math.nan


def test_a_diverging_lr_under_skip_stops_with_one_line_and_exit_3(tmp_path):
    result = cli("train", "--model", "mlp:hidden=16", "--data", "healthcare-sim:n=600", "--optimizer", "sgd",
                 "--lr", "1e6", "--on-nonfinite", "skip", "--epochs", "3", "--batch-size", "16", "--out", str(tmp_path), "--quiet")
    assert result.returncode == 3
    line = one_line_error(result.stderr)
    skipped, steps = map(int, re.search(r"(\d+) of (\d+) steps in epoch 1 were skipped", line).groups())
    assert steps == 30 and skipped > steps / 2  # 480 training samples / 16
    assert "Lower the lr" in line and "--on-nonfinite stop" in line
    assert not list(tmp_path.glob("*.json"))  # no record of a diverged run


def test_half_the_steps_skipped_goes_on_and_more_than_half_stops():
    record = lt.fit(tiny_model(), tiny_data(), techniques=[PoisonGrads(range(1, 11))], **OPTIONS)
    assert [e["nonfinite_skipped_steps"] for e in record["epochs"]] == [10, 0]
    with pytest.raises(TrainingDiverged, match=r"^11 of 20 steps in epoch 2 were skipped"):
        lt.fit(tiny_model(), tiny_data(), techniques=[PoisonGrads(range(21, 32))], **OPTIONS)


def test_skipped_steps_are_counted_per_epoch_not_cumulatively():
    record = lt.fit(tiny_model(), tiny_data(), techniques=[PoisonGrads({3, 25})], **{**OPTIONS, "epochs": 3})
    assert [e["nonfinite_skipped_steps"] for e in record["epochs"]] == [1, 1, 0]


def test_a_mid_epoch_resume_continues_the_epochs_count(tmp_path):
    poison = {3, 5, 25}
    options = {**OPTIONS, "checkpoint_every": "2"}
    full = lt.fit(tiny_model(), tiny_data(), techniques=[PoisonGrads(poison)], **options)
    with pytest.raises(KeyboardInterrupt):  # after step 6's checkpoint: two skips so far in epoch 1
        lt.fit(tiny_model(), tiny_data(), techniques=[PoisonGrads(poison), StopAtStep(7)], checkpoint_dir=tmp_path,
               **options)
    resumed = lt.fit(tiny_model(), tiny_data(), techniques=[PoisonGrads(poison)], checkpoint_dir=tmp_path,
                     resume=True, **options)
    assert [e["nonfinite_skipped_steps"] for e in resumed["epochs"]] == [2, 1]
    assert untimed(resumed["epochs"]) == untimed(full["epochs"])
