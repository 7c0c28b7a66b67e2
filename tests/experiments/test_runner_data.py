"""The experiment runner holds one data set at a time in preflight, and during the runs only those later runs need."""
import gc
import weakref

import pytest
import tomllib

import leantrain.data
import leantrain.experiments.report
import leantrain.train.run
from leantrain.experiments.runner import parse_experiment, run_experiment
from leantrain.train import memory

EXPERIMENT = """
[experiment]
name = "held"
seeds = [0, 1]

[defaults]
epochs = 1

[[cases]]
label = "a"
data = "healthcare-sim:n=300"

[[cases]]
label = "b"
data = "healthcare-sim:n=400"

[recipes.one]
[recipes.two]
lr = 0.01
"""


@pytest.fixture
def tracked(monkeypatch):
    """Every data set loaded, as (data, seed) and a weak reference: which are still alive at any moment."""
    loaded = []
    real_load = leantrain.data.load

    def load(spec, seed=0, **kw):
        alive_before = _alive(loaded)
        dataset = real_load(spec, seed=seed, **kw)
        loaded.append(((spec, seed), weakref.ref(dataset), alive_before))
        return dataset

    monkeypatch.setattr(leantrain.data, "load", load)
    return loaded


def _alive(loaded):
    gc.collect()
    return [key for key, ref, _ in loaded if ref() is not None]


def test_preflight_and_runs_hold_only_the_data_sets_still_needed(tmp_path, monkeypatch, tracked):
    seen = []

    def execute(config, dataset, **kw):
        seen.append((config.run_name, (config.data, config.seed), _alive(tracked)))
        return {}

    monkeypatch.setattr(leantrain.train.run, "execute", execute)
    monkeypatch.setattr(leantrain.experiments.report, "write_report", lambda out: None)
    experiment = parse_experiment(tomllib.loads(EXPERIMENT), "held.toml")
    run_experiment(experiment, tmp_path / "out", quiet=True)

    preflight, runs = tracked[:2], tracked[2:]
    assert [alive for _, _, alive in preflight] == [[], []]  # one data set at a time, each let go before the next
    assert len(runs) == 4  # each (data, seed) loaded once for its runs, shared by both recipes
    assert len(seen) == 8
    for name, key, alive in seen:
        assert key in alive and len(alive) <= 2, (name, alive)  # at most one case's seeds
        assert all(k[0] == key[0] for k in alive), (name, alive)  # never another case's data
    assert _alive(tracked) == []  # all let go at the end


def test_preflight_refuses_a_case_that_cannot_fit_in_memory_before_any_file(tmp_path, monkeypatch, tracked):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1024)
    experiment = parse_experiment(tomllib.loads(EXPERIMENT), "held.toml")
    with pytest.raises(leantrain.UsageError, match=r"held.toml \(case 'a', recipe 'one'\): not enough memory"):
        run_experiment(experiment, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()
