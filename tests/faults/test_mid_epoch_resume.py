"""Mid-epoch checkpoints: a run interrupted between epoch ends resumes bit for bit, techniques and all."""
import time

import pytest
import torch

import leantrain as lt
from leantrain.techniques import AdaptiveAccumulation, MixedPrecision, Technique, WarmupCosine
from leantrain.train.run_identity import resume_checkpoint
from tests.faults.helpers import LossTap, StopAtStep, same_weights, tiny_data, tiny_model, untimed

pytestmark = pytest.mark.timeout(60)


def _techniques():
    # fp16 (scaler state), adaptive accumulation (k changes mid-epoch; micro-batches drawn != steps), schedule.
    return [MixedPrecision("fp16", init_scale=2.0**10, growth_interval=5),
            AdaptiveAccumulation(k_min=2, k_max=4, update_every=3), WarmupCosine(warmup=0.1)]


def _run(out, extra=(), resume=False, techniques=_techniques, **options):
    tap, model = LossTap(), tiny_model()
    options = {"epochs": 2, "batch_size": 16, "lr": 5e-3, "device": "cpu", "seed": 0, "checkpoint_every": "2", **options}
    record = lt.fit(model, tiny_data(), techniques=[*techniques(), tap, *extra], checkpoint_dir=out, resume=resume,
                    **options)
    return record, model, tap.losses


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("full"))


@pytest.mark.parametrize("stop_at", [3, 5, 9])  # 320 samples / 16 / k: steps 1-9 are mid-epoch 1 or 2
def test_resume_mid_epoch_gives_the_same_step_losses_and_weights(tmp_path, uninterrupted, stop_at):
    full, full_model, full_losses = uninterrupted
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", extra=[StopAtStep(stop_at)])
    torch.manual_seed(1234)  # a fresh process's RNG is elsewhere: resume restores it
    resumed, resumed_model, resumed_losses = _run(tmp_path / "cut", resume=True)

    assert resumed_losses == full_losses and len(full_losses) > stop_at
    assert same_weights(full_model, resumed_model)
    assert untimed(resumed["epochs"]) == untimed(full["epochs"])


def test_resume_mid_epoch_with_the_dataloader_and_plain_fp32(tmp_path):
    run = dict(techniques=list, loader="dataloader", checkpoint_every="3")
    full, full_model, full_losses = _run(tmp_path / "full", **run)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", extra=[StopAtStep(7)], **run)
    resumed, resumed_model, resumed_losses = _run(tmp_path / "cut", resume=True, **run)
    assert resumed_losses == full_losses and same_weights(full_model, resumed_model)
    assert untimed(resumed["epochs"]) == untimed(full["epochs"])


def test_checkpoint_every_must_be_steps_or_seconds():
    for bad in ("0", "-3", "abc", "1.5", "0s", "nans"):
        with pytest.raises(lt.UsageError, match="checkpoint_every must be N"):
            _run(None, checkpoint_every=bad)


class SlowSteps(Technique):
    """Each step takes at least 5 ms, so a 1 ms checkpoint interval has always passed by the next step."""

    name = "slow-steps"

    def after_optimizer_step(self, state) -> None:
        time.sleep(0.005)


def test_checkpoint_every_seconds_writes_mid_epoch(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, extra=[SlowSteps(), StopAtStep(12)], techniques=list, checkpoint_every="0.001s")
    from leantrain.train import checkpoint

    saved = checkpoint.load(resume_checkpoint(tmp_path, None))
    assert saved["progress"] is not None and saved["step"] == 12  # the last step before the stop, mid-epoch 1
