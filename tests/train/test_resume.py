import pytest
import torch

import leantrain as lt
from leantrain.models import build
from leantrain.techniques import Technique

TIMING_KEYS = {"time_s", "val_time_s", "train_steps_per_s", "val_steps_per_s", "overall_steps_per_s",
               "samples_per_s", "train_tokens_per_s", "val_tokens_per_s", "overall_tokens_per_s",
               "foreign_cpu_cores", "utilisation"}


class Crash(Technique):
    """Interrupts training at the start of an epoch, after the previous epoch's checkpoint was written."""

    def __init__(self, at_epoch):
        self.at_epoch = at_epoch

    def before_step(self, state):
        if state.epoch == self.at_epoch:
            raise KeyboardInterrupt


def _model_and_data():
    data = lt.data.load("healthcare-sim:n=1500")
    torch.manual_seed(0)
    return build("mlp:dropout=0.2", data), data  # dropout: the global RNG must be restored too


def _interrupt(checkpoint_dir, at_epoch, **options):
    """A run killed at the start of epoch ``at_epoch``: its last checkpoint stays in ``checkpoint_dir``."""
    model, data = _model_and_data()
    with pytest.raises(KeyboardInterrupt):
        lt.fit(model, data, checkpoint_dir=checkpoint_dir, techniques=[Crash(at_epoch)], **options)


def _untimed(epochs):
    return [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in epochs]


@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
def test_resume_after_epoch_k_is_bitwise_identical_to_an_uninterrupted_run(tmp_path, loader):
    options = dict(epochs=4, batch_size=64, loader=loader, seed=5)
    model, data = _model_and_data()
    whole = lt.fit(model, data, checkpoint_dir=tmp_path / "whole", **options)

    _interrupt(tmp_path / "part", at_epoch=2, **options)
    assert len(list((tmp_path / "part").glob("*.ckpt"))) == 1 and not list((tmp_path / "part").glob("*.json"))

    resumed_model, data = _model_and_data()  # a fresh process would rebuild the model like this
    torch.manual_seed(1234)  # and its RNG would be elsewhere: resume must restore it
    resumed = lt.fit(resumed_model, data, checkpoint_dir=tmp_path / "part", resume=True, **options)

    for p, q in zip(model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(p, q)
    assert _untimed(resumed["epochs"]) == _untimed(whole["epochs"])
    assert not list((tmp_path / "part").glob("*.ckpt"))  # a finished run leaves its record, not weights


def test_resume_refuses_a_checkpoint_from_other_settings(tmp_path):
    _interrupt(tmp_path, at_epoch=1, epochs=3)
    model, data = _model_and_data()
    with pytest.raises(lt.UsageError, match="other settings \\(lr\\)"):
        lt.fit(model, data, epochs=3, lr=0.5, checkpoint_dir=tmp_path, resume=True)


def test_resume_refuses_other_techniques_than_the_checkpoint_was_written_with(tmp_path):
    _interrupt(tmp_path, at_epoch=1, epochs=3)
    model, data = _model_and_data()
    with pytest.raises(lt.UsageError, match="written with techniques"):
        lt.fit(model, data, epochs=3, checkpoint_dir=tmp_path, resume=True, techniques=[lt.MixedPrecision("fp16")])
