"""TrainingCheckpoint: only the main rank writes, every rank reads, and restore puts back exactly what was saved."""
import pytest
import torch
from torch import nn

from leantrain.config import RunConfig
from leantrain.errors import UsageError
from leantrain.parallel.dist import Dist
from leantrain.tasks import get_task
from leantrain.train.state import TrainState
from leantrain.train.training_state import TrainingCheckpoint


class _NotMain(Dist):
    @property
    def is_main(self) -> bool:
        return False


def _state(dist=None, seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    return TrainState(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=0.1),
                      task=get_task("classification"), device=torch.device("cpu"), base_lr=0.1, steps_per_epoch=2,
                      total_epochs=3, dist=dist or Dist())


def _config(**overrides):
    return RunConfig.from_dict({"model": "mlp", "data": "imagenet-sim", "epochs": 3, **overrides}, where="test")


def test_a_rank_that_is_not_main_writes_nothing(tmp_path):
    path = tmp_path / "run.ckpt"
    TrainingCheckpoint(path, _config(), 1).save(_state(_NotMain()), [], {})
    assert not path.exists()
    TrainingCheckpoint(None, _config(), 1).save(_state(), [], {})  # no path: no checkpoint, no error


def test_restore_puts_back_weights_optimizer_counters_and_random_state(tmp_path):
    path, config = tmp_path / "run.ckpt", _config()
    state = _state()
    state.model(torch.randn(5, 4)).sum().backward()
    state.optimizer.step()
    state.epoch, state.step, state.samples_seen = 1, 2, 64
    ckpt = TrainingCheckpoint(path, config, 1)
    ckpt.save(state, [], {"autotune": None})
    expected_draw = torch.rand(3)  # what the RNG gives next after the save
    fresh = _state(seed=1)
    saved = TrainingCheckpoint(path, config, 1).read()
    TrainingCheckpoint(path, config, 1).restore(fresh, [], saved)
    assert all(torch.equal(a, b) for a, b in zip(state.model.state_dict().values(), fresh.model.state_dict().values()))
    assert fresh.optimizer.state_dict()["state"][0]["exp_avg"].equal(state.optimizer.state_dict()["state"][0]["exp_avg"])
    assert (fresh.epoch, fresh.step, fresh.samples_seen) == (1, 2, 64)
    assert torch.equal(torch.rand(3), expected_draw)
    ckpt.remove(fresh)
    assert not path.exists() and TrainingCheckpoint(path, config, 1).read() is None


def test_read_refuses_another_world_size_or_other_settings_in_one_line(tmp_path):
    path = tmp_path / "run.ckpt"
    TrainingCheckpoint(path, _config(), 1).save(_state(), [], {})
    with pytest.raises(UsageError, match=r"written by 1 worker\(s\); resume it with 1, not 2"):
        TrainingCheckpoint(path, _config(), 2).read()
    with pytest.raises(UsageError, match=r"other settings \(.*lr"):
        TrainingCheckpoint(path, _config(lr=0.5), 1).read()
