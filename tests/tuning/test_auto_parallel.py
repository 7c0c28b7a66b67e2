"""auto under data parallelism: rank 0 alone measures, every rank trains with its choices; threads auto is each
worker's share of the node's cores."""
import importlib
import os

import pytest

from leantrain.parallel.launch import cores_available
from tests.parallel.helpers import run_workers

resolve = importlib.import_module("leantrain.tuning.resolve")  # the module (the package exports its function)
BASE = {"model": "mlp:hidden=32", "data": "healthcare-sim:n=640", "epochs": 1, "batch_size": 32, "lr": 3e-3,
        "device": "cpu", "seed": 3, "parallel": "ddp"}


@pytest.mark.timeout(120)
def test_rank_0_alone_probes_and_every_rank_trains_with_its_choices(tmp_path, monkeypatch):
    probed = tmp_path / "probed"
    probed.mkdir()

    def spy(real):
        def measure(*args, **kwargs):
            (probed / f"{real.__name__}-rank{os.environ['RANK']}").touch()  # the workers are forked: the spy goes too
            return real(*args, **kwargs)
        return measure

    monkeypatch.setattr(resolve, "_precision", spy(resolve._precision))
    monkeypatch.setattr(resolve, "_optimizer", spy(resolve._optimizer))
    monkeypatch.setattr(resolve, "_threads", spy(resolve._threads))
    config = {**BASE, "precision": "auto", "optimizer": "auto-adam", "threads": "auto"}
    ranks = run_workers(2, tmp_path / "run", config)

    assert sorted(p.name for p in probed.iterdir()) == ["_optimizer-rank0", "_precision-rank0"]
    tuned = [rank["record"]["run"]["autotune"] for rank in ranks]
    for knob in ("precision", "optimizer"):
        assert tuned[0][knob]["choice"] == tuned[1][knob]["choice"]
        assert tuned[0][knob]["source"] in ("measured", "cache") and tuned[1][knob]["source"] == "rank 0"
    share = max(1, cores_available() // 2)
    assert [t["threads"]["choice"] for t in tuned] == [share, share]
    assert tuned[0]["threads"] == {"choice": share, "cpus": cores_available(), "workers": 2, "source": "per-worker share"}
    assert ranks[0]["record"]["run"]["config"]["precision"] == "auto"
    for got, want in zip(ranks[1]["steps"], ranks[0]["steps"]):  # the same choices: the same weights, step by step
        assert got.equal(want)


@pytest.mark.timeout(120)
def test_ensemble_members_each_measure_their_own_model(tmp_path, monkeypatch):
    probed = tmp_path / "probed"
    probed.mkdir()
    real = resolve._precision

    def spy(*args, **kwargs):
        (probed / f"rank{os.environ['RANK']}").touch()
        return real(*args, **kwargs)

    monkeypatch.setattr(resolve, "_precision", spy)
    config = {**BASE, "parallel": "ensemble", "members": "mlp:hidden=16,mlp:hidden=32", "precision": "auto"}
    ranks = run_workers(2, tmp_path / "run", config)
    assert sorted(p.name for p in probed.iterdir()) == ["rank0", "rank1"]
    for rank in ranks:
        assert rank["record"]["run"]["autotune"]["precision"]["source"] in ("measured", "cache")
