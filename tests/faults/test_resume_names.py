"""F4: ``train --resume DIR`` with several interrupted runs in DIR names a way out that works (``--run-name``), every
message names real flags, and a checkpoint renamed to another file name is refused instead of training its run
from scratch."""
import pytest

from leantrain.train import checkpoint
from tests.faults.helpers import cli, one_line_error

pytestmark = pytest.mark.timeout(60)
TINY = ["--model", "mlp:hidden=8", "--data", "healthcare-sim:n=300", "--epochs", "2", "--batch-size", "16", "--quiet"]


def _interrupt(monkeypatch, folder, run_name):
    """``folder/<run_name>.ckpt``: a ``leantrain train`` interrupted (Ctrl-C) just after its first checkpoint."""
    real_save = checkpoint.save

    def save_then_interrupt(path, payload):
        real_save(path, payload)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)
    assert cli("train", *TINY, "--checkpoint-every", "2", "--run-name", run_name, "--out", str(folder)).returncode == 130
    monkeypatch.undo()
    return folder / f"{run_name}{checkpoint.SUFFIX}"


@pytest.fixture
def two_runs(tmp_path, monkeypatch):
    return _interrupt(monkeypatch, tmp_path, "a"), _interrupt(monkeypatch, tmp_path, "b")


def test_two_interrupted_runs_name_them_and_the_flag_that_picks_one(tmp_path, two_runs):
    result = cli("train", "--resume", str(tmp_path))
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert "holds 2 interrupted runs (a, b)" in line and f"--resume {tmp_path} --run-name NAME" in line


def test_resume_with_run_name_picks_that_run_and_leaves_the_other(tmp_path, two_runs):
    a, b = two_runs
    before = a.read_bytes()
    assert cli("train", "--resume", str(tmp_path), "--run-name", "b").returncode == 0
    assert (tmp_path / "b.json").is_file() and not b.exists()
    assert a.read_bytes() == before and not (tmp_path / "a.json").exists()


def test_resume_with_an_unknown_run_name_lists_the_runs(tmp_path, two_runs):
    result = cli("train", "--resume", str(tmp_path), "--run-name", "c")
    assert result.returncode == 2
    assert "no checkpoint c.ckpt" in (line := one_line_error(result.stderr)) and "interrupted runs: a, b" in line


def test_other_settings_with_resume_name_real_flags(tmp_path, two_runs):
    result = cli("train", "--resume", str(tmp_path), "--run-name", "a", "--epochs", "3", "--batch-size", "8")
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert "drop --epochs, --batch-size" in line and "only --run-name may be given" in line and "--name" not in line


def test_a_fresh_run_over_an_interrupted_one_suggests_a_command_that_works(tmp_path, monkeypatch):
    _interrupt(monkeypatch, tmp_path, "a")
    _interrupt(monkeypatch, tmp_path, "b")
    result = cli("train", *TINY, "--run-name", "a", "--out", str(tmp_path))
    assert result.returncode == 2
    suggested = f"leantrain train --resume {tmp_path} --run-name a"
    assert suggested in one_line_error(result.stderr)
    assert cli(*suggested.split()[1:]).returncode == 0 and (tmp_path / "a.json").is_file()


def test_a_renamed_checkpoint_is_refused_naming_both_names(tmp_path, monkeypatch):
    renamed = _interrupt(monkeypatch, tmp_path, "a").rename(tmp_path / f"c{checkpoint.SUFFIX}")
    before = renamed.read_bytes()
    for argv in (["--resume", str(tmp_path)], ["--resume", str(tmp_path), "--run-name", "c"]):
        result = cli("train", *argv)
        assert result.returncode == 2
        line = one_line_error(result.stderr)
        assert f"checkpoint {renamed} holds run a" in line and "not c" in line and "rename it back to a.ckpt" in line
    assert renamed.read_bytes() == before and not list(tmp_path.glob("*.json"))
