"""The per-worker ensemble: members differ, the averaged ensemble is at least as good as its best member on real
digits, and the stacked meta-learner is fitted on one half of the validation split and scored on the other."""
import pytest
import torch

from leantrain.errors import UsageError
from leantrain.parallel import ensemble
from leantrain.parallel.ensemble import member_spec, split_members, stacking_split
from tests.parallel.helpers import run_workers


@pytest.mark.timeout(240)
def test_averaged_ensemble_reaches_its_best_member_on_real_digits(tmp_path):
    config = {"model": "mlp:hidden=64", "data": "digits-image", "epochs": 6, "batch_size": 32, "lr": 3e-3,
              "device": "cpu", "parallel": "ensemble", "seed": 1}
    ranks = run_workers(3, tmp_path, config, out_dir=tmp_path / "out")
    last = ranks[0]["record"]["epochs"][-1]
    members = last["members"]
    assert len({m["val_acc"] for m in members}) > 1  # three different members (seeds), not one model thrice
    assert last["ensemble"]["average_acc"] >= last["ensemble"]["best_member_acc"], last["ensemble"]
    assert last["val_acc"] == last["ensemble"]["average_acc"]  # the run's headline is the ensemble's
    assert len(list((tmp_path / "out").glob("*.json"))) == 1 and not list((tmp_path / "out").glob("*.ckpt"))


def test_stacked_meta_learner_never_sees_its_scoring_split(monkeypatch):
    fit_idx, score_idx = stacking_split(101, seed=0)
    assert not set(fit_idx.tolist()) & set(score_idx.tolist())
    assert sorted(fit_idx.tolist() + score_idx.tolist()) == list(range(101))
    seen = {}
    from sklearn.pipeline import Pipeline

    original_fit = Pipeline.fit

    def spy(self, x, y):
        seen["rows"] = x.copy()
        return original_fit(self, x, y)

    monkeypatch.setattr(Pipeline, "fit", spy)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (101,), generator=g)
    log_probs = [torch.randn(101, 3, generator=g).log_softmax(1) for _ in range(2)]
    ensemble.stacked_accuracy(log_probs, y, fit_idx, score_idx)
    features = torch.cat(log_probs, 1).numpy()
    assert (seen["rows"] == features[fit_idx.numpy()]).all()  # exactly the fitting half, nothing of the other


def test_members_parse_options_and_match_the_workers():
    assert split_members("mlp,mlp:hidden=256,depth=2,cnn") == ["mlp", "mlp:hidden=256,depth=2", "cnn"]
    assert member_spec("mlp", None, 1, 2) == "mlp"
    assert member_spec("mlp", "mlp,cnn", 1, 2) == "cnn"
    with pytest.raises(UsageError, match="2 models .* for 3 workers"):
        member_spec("mlp", "mlp,cnn", 0, 3)


def test_bad_members_are_one_line_errors(capsys, tmp_path):
    from leantrain.cli import main

    base = ["train", "--data", "digits-image", "--epochs", "1", "--quiet", "--out", str(tmp_path / "o")]
    assert main([*base, "--parallel", "ensemble", "--procs", "2", "--members", "mlp,nosuchnet"]) == 2
    assert "nosuchnet" in capsys.readouterr().err
    assert main([*base, "--parallel", "ensemble", "--procs", "3", "--members", "mlp,cnn"]) == 2
    assert "2 models for procs 3" in capsys.readouterr().err
    assert main([*base, "--members", "mlp,cnn"]) == 2
    assert "members are for --parallel ensemble" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
