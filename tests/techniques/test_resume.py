"""Resume with techniques on (fp16 scaler, adaptive accumulation, complexity width, schedule) is bit-for-bit."""
import pytest
import torch

import leantrain
from leantrain.data import from_tensors
from leantrain.models.mlp import MLP
from leantrain.techniques import (
    ActivationCheckpointing,
    AdaptiveAccumulation,
    ComplexityMatching,
    GradClip,
    MixedPrecision,
    Technique,
    WarmupCosine,
)

KEYS = ("train_loss", "val_loss", "val_acc", "hidden_width", "accum_steps", "noise_scale_microbatches", "lr",
        "loss_scale", "skipped_steps", "schedule_progress", "train_steps")


class Interrupt(Technique):
    name = "interrupt"

    def __init__(self, at_epoch):
        self.at_epoch = at_epoch

    def before_step(self, state):
        if state.epoch == self.at_epoch:  # epoch at_epoch's checkpoint is on disk by now
            raise KeyboardInterrupt


def _techniques():
    return [
        ComplexityMatching(start_width=4, max_width=32, min_delta=0.2, patience=1, prune=False),
        MixedPrecision("fp16", init_scale=2.0**10, growth_interval=5),
        ActivationCheckpointing(2),
        AdaptiveAccumulation(k_min=2, k_max=6, update_every=3),
        WarmupCosine(warmup=0.1),
        GradClip(5.0),
    ]


def _run(out, extra=(), resume=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 12, generator=g)
    data = from_tensors(x, (x @ torch.randn(12, 8, generator=g)).argmax(1))
    torch.manual_seed(0)
    model = MLP(12, 8, hidden=4, depth=2)
    record = leantrain.fit(model, data, epochs=4, batch_size=32, lr=5e-3, device="cpu", seed=0,
                           techniques=_techniques() + list(extra), checkpoint_dir=out, resume=resume)
    return record, model


def test_resume_with_techniques_is_bitwise_identical(tmp_path):
    full, full_model = _run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", extra=[Interrupt(at_epoch=2)])
    resumed, resumed_model = _run(tmp_path / "cut", resume=True)

    widths = [e["hidden_width"] for e in full["epochs"]]
    assert widths[-1] > widths[0]  # the model was resized before the interruption: the rebuild path ran
    assert len(resumed["epochs"]) == 4
    for a, b in zip(full["epochs"], resumed["epochs"]):
        assert {k: a.get(k) for k in KEYS} == {k: b.get(k) for k in KEYS}
    full_state, resumed_state = full_model.state_dict(), resumed_model.state_dict()
    assert list(full_state) == list(resumed_state)
    assert all(torch.equal(full_state[k], resumed_state[k]) for k in full_state)
