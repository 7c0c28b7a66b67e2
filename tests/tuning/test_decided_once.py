"""An auto setting is decided once per recipe and machine within an experiment (issue 25, case g): a busy machine
keeps a probe out of the cache, and the next seed of the same recipe measured again and chose otherwise."""
import pytest
import torch

import leantrain as lt
from leantrain.models import build
from leantrain.tuning import decided_once, resolve
from tests.tuning.test_resolve import Fake, _config


@pytest.fixture
def data():
    return lt.data.load("healthcare-sim:n=300")


class Flipping(Fake):
    """Each probe measures the other precision faster, on a machine too busy for the cache."""

    def __init__(self):
        super().__init__(busy=3.0)

    def _precision(self, model, make_optimizer, forward_loss, device, candidates):
        bf16_faster = len(self.probes) % 2 == 0
        self.precision = {"fp32": (10.0, 1.0), "bf16": (4.0 if bf16_faster else 40.0, 1.0)}
        return super()._precision(model, make_optimizer, forward_loss, device, candidates)

    def measure(self):
        measure = super().measure()

        class Busy:
            def cores(self):
                return 3.0

        measure.cpu_meter = Busy
        return measure


def _choices(data, fake, seeds=(0, 1, 2)):
    chosen = []
    for seed in seeds:
        config = _config(precision="auto", seed=seed)
        tuned = resolve(config, build(config.model, data), data, torch.device("cpu"), measure=fake.measure())
        chosen.append((tuned.config.precision, tuned.record["precision"]["source"]))
    return chosen


def test_without_a_scope_each_seed_measures_and_may_choose_otherwise(data):
    assert [c for c, _ in _choices(data, Flipping())] == ["bf16", "fp32", "bf16"]  # what the issue saw


def test_within_an_experiment_every_seed_takes_the_first_choice(data):
    fake = Flipping()
    with decided_once():
        chosen = _choices(data, fake)
    assert chosen == [("bf16", "measured"), ("bf16", "experiment"), ("bf16", "experiment")]
    assert fake.probes == ["precision"]
    assert [c for c, _ in _choices(data, fake)] == ["fp32", "bf16", "fp32"]  # the scope ended with the experiment
