"""A checkpoint missing a key, and an empty folder argument: one line, exit 2, nothing written."""
import pytest

from leantrain.train import checkpoint
from leantrain.train.run_identity import resume_checkpoint
from tests.faults.helpers import cli, one_line_error

pytestmark = pytest.mark.timeout(60)
TINY = ["--model", "mlp", "--data", "healthcare-sim:n=300", "--epochs", "2", "--batch-size", "16", "--quiet"]


@pytest.fixture
def interrupted(tmp_path, monkeypatch):
    """A folder holding the checkpoint of a ``leantrain train`` interrupted (Ctrl-C) just after its first write."""
    real_save = checkpoint.save

    def save_then_interrupt(path, payload):
        real_save(path, payload)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)
    assert cli("train", *TINY, "--checkpoint-every", "2", "--out", str(tmp_path)).returncode == 130
    monkeypatch.undo()
    return resume_checkpoint(tmp_path, None)


def test_every_checkpoint_holds_the_keys_a_resume_reads(interrupted):
    assert set(checkpoint.KEYS) <= checkpoint.load(interrupted).keys()


@pytest.mark.parametrize("key", ["optimizer", "config", "step"])
def test_a_checkpoint_missing_a_key_is_one_line_naming_the_file_and_the_key(interrupted, key):
    payload = checkpoint.load(interrupted)
    del payload[key]
    checkpoint.save(interrupted, payload)  # checksummed again: only the key is wrong
    before = interrupted.read_bytes()
    result = cli("train", "--resume", str(interrupted.parent))
    assert result.returncode == 2
    assert f"checkpoint {interrupted} lacks '{key}'" in one_line_error(result.stderr)
    assert interrupted.read_bytes() == before and not list(interrupted.parent.glob("*.json"))


@pytest.mark.parametrize("argv", [
    ["train", *TINY, "--out", ""],
    ["train", "--resume", ""],
    ["run", "experiments/default.toml", "--out", ""],
    ["report", ""],
])
def test_an_empty_folder_is_one_line_not_the_current_folder(tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    result = cli(*argv)
    assert result.returncode == 2
    assert "an empty folder name" in one_line_error(result.stderr)
    assert not list(tmp_path.iterdir())
