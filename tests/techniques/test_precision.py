"""Mixed precision: fp16/bf16 track fp32, the loss scaler skips and counts overflow steps, clipping sees unscaled grads."""
import pytest
import torch
from torch import nn

import leantrain
from leantrain.data import from_tensors
from leantrain.techniques import GradClip, MixedPrecision, Technique


def _data(seed=0, n=512, d=16, classes=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, classes, generator=g)).argmax(1)
    return from_tensors(x, y, seed=seed)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_final_loss_matches_fp32(precision):
    data = _data()
    ref = leantrain.fit(_model(), data, epochs=3, batch_size=32, lr=3e-3, device="cpu")
    low = leantrain.fit(_model(), data, epochs=3, batch_size=32, lr=3e-3, device="cpu", techniques=[MixedPrecision(precision)])
    ref_loss, low_loss = ref["epochs"][-1]["val_loss"], low["epochs"][-1]["val_loss"]
    assert ref_loss < 0.85  # it learned something (chance: ln 3 = 1.10)
    assert abs(low_loss - ref_loss) < 0.05 * ref_loss + 0.01


class InjectInf(Technique):
    """Poison one parameter's gradient with inf on a chosen optimizer step."""

    name = "inject"

    def __init__(self, at_step):
        self.at_step = at_step
        self.weights_before = None

    def after_micro_backward(self, state, micro_index):
        if state.step == self.at_step:
            next(state.model.parameters()).grad[0, 0] = float("inf")
            self.weights_before = [p.detach().clone() for p in state.model.parameters()]

    def after_optimizer_step(self, state):
        if state.step == self.at_step + 1:
            self.weights_after = [p.detach().clone() for p in state.model.parameters()]
            self.scale_after = state.grad_scaler.get_scale()


def test_fp16_scaler_skips_and_counts_inf_step_and_backs_off():
    precision, inject = MixedPrecision("fp16", init_scale=1024.0), InjectInf(at_step=3)
    record = leantrain.fit(_model(), _data(), epochs=1, batch_size=64, device="cpu", techniques=[precision, inject])
    assert all(torch.equal(a, b) for a, b in zip(inject.weights_before, inject.weights_after))  # step skipped
    assert inject.scale_after == 512.0  # backed off by half
    assert record["epochs"][0]["skipped_steps"] == 1
    assert precision.skipped_steps == 1


def test_gradients_are_unscaled_before_clipping():
    """One fp16 step with clipping moves the weights as the fp32 step with clipping does (scale 2**16 otherwise)."""
    data = _data(n=80)

    class Grab(Technique):
        name = "grab"
        runs_after = ("grad_clip",)

        def before_optimizer_step(self, state):
            self.grads = [p.grad.clone() for p in state.model.parameters()]

    results = {}
    for precision in ("fp32", "fp16"):
        grab = Grab()
        techniques = ([MixedPrecision("fp16")] if precision == "fp16" else []) + [GradClip(0.05), grab]
        leantrain.fit(_model(), data, epochs=1, batch_size=64, device="cpu", techniques=techniques)
        results[precision] = grab.grads
    norm32 = torch.stack([g.norm() for g in results["fp32"]]).norm()
    norm16 = torch.stack([g.norm() for g in results["fp16"]]).norm()
    assert norm32 == pytest.approx(0.05, rel=1e-4) and norm16 == pytest.approx(0.05, rel=1e-3)
    for a, b in zip(results["fp32"], results["fp16"]):
        assert torch.allclose(a, b, atol=2e-3 * 0.05, rtol=2e-2)


class _Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.lstm(x.view(len(x), 4, 4))
        self.lstm_dtype = out.dtype
        return self.head(out[:, -1])


def test_recurrent_layers_this_cpu_cannot_run_in_bf16_stay_fp32(monkeypatch):
    from leantrain.techniques import precision

    monkeypatch.setattr(precision, "runs_in_low_precision", lambda *args: False)  # as on an AVX2-only CPU
    model = _Recurrent()
    keys = list(model.state_dict())
    record = leantrain.fit(model, _data(), epochs=3, batch_size=32, lr=1e-2, device="cpu",
                           techniques=[MixedPrecision("bf16")])
    assert record["epochs"][0]["kept_fp32"] == ["lstm"]
    assert model.lstm_dtype == torch.float32  # the LSTM ran with autocast off
    assert list(model.state_dict()) == keys  # names and checkpoints unchanged
    assert record["epochs"][-1]["val_loss"] < 1.0  # it learned (chance: ln 3 = 1.10)


def test_recurrent_layers_that_run_in_bf16_are_left_alone(monkeypatch):
    from leantrain.techniques import precision

    monkeypatch.setattr(precision, "runs_in_low_precision", lambda *args: True)
    model = _Recurrent()
    assert precision.keep_unsupported_in_fp32(model, torch.device("cpu"), torch.bfloat16) == []
    assert type(model.lstm) is nn.LSTM


class InfAtSteps(Technique):
    """inf in one gradient on each of the given optimizer steps."""

    name = "inf-at-steps"

    def __init__(self, steps, stop_at=None):
        self.steps, self.stop_at = set(steps), stop_at

    def before_step(self, state):
        if state.step == self.stop_at:
            raise KeyboardInterrupt

    def after_micro_backward(self, state, micro_index):
        if state.step in self.steps:
            next(state.model.parameters()).grad[0, 0] = float("inf")


def test_fp16_skipped_steps_are_each_epochs_own_count_across_a_resume(tmp_path):
    """An epoch record's skipped_steps is that epoch's (it was the running total), and a resume mid-epoch continues
    the epoch's count; the technique's skipped_steps stays the run's total."""
    steps_per_epoch = 409 // 32  # 80% of 512 for training, whole batches of 32
    bad = {3, steps_per_epoch + 2}

    def run(out, stop_at=None, resume=False):
        precision = MixedPrecision("fp16", init_scale=1024.0)
        record = leantrain.fit(_model(), _data(), epochs=2, batch_size=32, device="cpu", checkpoint_dir=out,
                               checkpoint_every="2", resume=resume, techniques=[precision, InfAtSteps(bad, stop_at)])
        return precision, record

    precision, whole = run(tmp_path / "whole")
    assert [e["skipped_steps"] for e in whole["epochs"]] == [1, 1] and precision.skipped_steps == 2
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", stop_at=steps_per_epoch + 5)  # mid-epoch 2, after its bad step's checkpoint
    _, resumed = run(tmp_path / "cut", resume=True)
    assert [e["skipped_steps"] for e in resumed["epochs"]] == [1, 1]
