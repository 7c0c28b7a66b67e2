"""A checkpoint whose saved run name is not its file's name is refused in one line naming both, by every entry point
(F4): ``train --resume DIR``, ``lt.fit(resume=True)`` and ``run --resume``; an ensemble member's checkpoint still reads."""
import shutil
from pathlib import Path

import pytest

import leantrain as lt
from leantrain.train import checkpoint
from leantrain.train.training_state import read_checkpoint
from tests.faults.helpers import cli, one_line_error, tiny_data, tiny_model

pytestmark = pytest.mark.timeout(90)
TINY = ["--model", "mlp:hidden=8", "--data", "healthcare-sim:n=300", "--epochs", "2", "--batch-size", "16", "--quiet"]
EXPERIMENT = """
[experiment]
name = "e"
[defaults]
model = "mlp:hidden=8"
data = "healthcare-sim:n=300"
epochs = 2
batch_size = 16
[[cases]]
label = "c"
"""
FIT = {"epochs": 2, "batch_size": 16, "device": "cpu", "checkpoint_every": "2"}


def _save_then(error, monkeypatch):
    """``checkpoint.save`` writes its checkpoint, then raises ``error`` (a kill just after the first checkpoint)."""
    real_save = checkpoint.save

    def save_then_raise(path, payload):
        real_save(path, payload)
        raise error

    monkeypatch.setattr(checkpoint, "save", save_then_raise)


def _interrupt(monkeypatch, folder, run_name, *flags):
    """``folder/<run_name>.ckpt``: a ``leantrain train`` interrupted just after its first checkpoint."""
    _save_then(KeyboardInterrupt, monkeypatch)
    result = cli("train", *TINY, "--checkpoint-every", "2", "--run-name", run_name, "--out", str(folder), *flags)
    assert result.returncode == 130, result.stderr
    monkeypatch.undo()
    return folder / f"{run_name}{checkpoint.SUFFIX}"


def test_fit_resume_refuses_a_renamed_checkpoint_naming_both(tmp_path, monkeypatch):
    """F4: fit(resume=True) trained run b from run a's checkpoint, renamed to b's."""
    _save_then(KeyboardInterrupt, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        lt.fit(tiny_model(), tiny_data(), checkpoint_dir=tmp_path, name="a", **FIT)
    monkeypatch.undo()
    renamed = (tmp_path / "a.ckpt").rename(tmp_path / "b.ckpt")
    with pytest.raises(lt.UsageError) as refused:
        lt.fit(tiny_model(), tiny_data(), checkpoint_dir=tmp_path, name="b", resume=True, **FIT)
    assert str(refused.value) == (f"checkpoint {renamed} holds run a (the name in its saved settings), not b: "
                                  "rename it back to a.ckpt")
    assert not list(tmp_path.glob("*.json"))


def test_run_resume_refuses_a_renamed_checkpoint_naming_both(tmp_path, monkeypatch):
    exp, out = tmp_path / "exp.toml", tmp_path / "out"
    # Two recipes alike but for a setting that changes no result: the other's checkpoint would resume "fine".
    exp.write_text(EXPERIMENT + 'checkpoint_every = "2"\n[recipes.a]\n[recipes.b]\nmemory_check = false\n')
    _save_then(KeyboardInterrupt, monkeypatch)
    assert cli("run", str(exp), "--out", str(out), "--quiet").returncode == 130
    monkeypatch.undo()
    renamed = (out / "c-a-s0.ckpt").rename(out / "c-b-s0.ckpt")
    result = cli("run", str(exp), "--out", str(out), "--resume", "--quiet")
    assert result.returncode == 2
    assert f"checkpoint {renamed} holds run c-a-s0" in one_line_error(result.stderr)
    assert not (out / "c-b-s0.json").exists()


def test_an_ensemble_members_checkpoint_reads_and_a_renamed_one_is_refused(tmp_path, monkeypatch):
    ckpt = _interrupt(monkeypatch, tmp_path, "a")
    member = shutil.copy(ckpt, tmp_path / "a.member1.ckpt")
    assert read_checkpoint(Path(member))["config"]["name"] == "a"
    other = shutil.copy(ckpt, tmp_path / "b.member1.ckpt")
    with pytest.raises(lt.UsageError, match=r"holds run a .*not b: rename it back to a\.member1\.ckpt"):
        read_checkpoint(Path(other))
