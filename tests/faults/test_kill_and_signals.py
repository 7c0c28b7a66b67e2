"""Kills at random steps (also inside a checkpoint write), SIGTERM and a full disk: nothing lost or corrupt."""
import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import leantrain as lt
from leantrain import fileio
from leantrain.train import checkpoint
from leantrain.train.run_identity import resume_checkpoint
from tests.faults.helpers import REPO, LossTap, StopAtStep, cli, one_line_error, same_weights, tiny_data, tiny_model

pytestmark = pytest.mark.timeout(90)
VICTIM = Path(__file__).parent / "scripts" / "victim.py"
OPTIONS = {"epochs": 3, "batch_size": 16, "lr": 5e-3, "device": "cpu", "seed": 0, "checkpoint_every": "2"}
STEPS = 60  # 3 epochs of 320 training samples in batches of 16


def _victim(out, mode, step):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(VICTIM), str(out), mode, str(step)], env=env, capture_output=True,
                          text=True, timeout=60)


def _fit(out=None, resume=False):
    tap, model = LossTap(), tiny_model()
    lt.fit(model, tiny_data(), techniques=[tap], checkpoint_dir=out, resume=resume, **OPTIONS)
    return model, tap.losses


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return _fit(tmp_path_factory.mktemp("whole"))


@pytest.mark.parametrize("mode", ["kill", "kill-in-write"])
def test_a_sigkill_at_a_random_step_loses_nothing(tmp_path, uninterrupted, mode):
    step = random.Random(f"{mode}-{os.getpid()}").randrange(4, STEPS - 2, 2)  # any step; printed on failure
    result = _victim(tmp_path, mode, step)
    assert result.returncode == -signal.SIGKILL, (step, result.stderr)
    (ckpt,) = [p for p in tmp_path.glob("*.ckpt") if not p.name.startswith(".")]
    saved = checkpoint.load(ckpt)  # whole, checksum verified
    # An epoch's last step (20, 40) is saved after validation; a kill at "before step 21" comes before that.
    expected = step if mode == "kill" and step % 20 else step - 2
    assert saved["step"] == expected, step
    if mode == "kill-in-write":
        assert list(tmp_path.glob(".*.tmp*.ckpt"))  # the dead writer's temporary is there ...
    model, losses = _fit(tmp_path, resume=True)  # ... and neither blocks nor feeds the resume
    assert not list(tmp_path.glob(".*.tmp*")) and not list(tmp_path.glob("*.ckpt"))
    whole_model, whole_losses = uninterrupted
    assert losses == whole_losses, step
    assert same_weights(model, whole_model), step


def test_sigterm_stops_like_ctrl_c_keeping_the_checkpoint(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = ["train", "--model", "mlp", "--data", "healthcare-sim:n=20000", "--batch-size", "8", "--epochs", "3",
            "--checkpoint-every", "5", "--threads", "1", "--out", str(tmp_path), "--quiet"]
    process = subprocess.Popen([sys.executable, "-m", "leantrain", *args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not [p for p in tmp_path.glob("*.ckpt") if not p.name.startswith(".")]:
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read() if process.stderr else ""
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 143, err
    kept = resume_checkpoint(tmp_path, None)
    assert err.strip() == f"leantrain: terminated (SIGTERM); the last checkpoint is kept for --resume: {kept}"
    saved = checkpoint.load(kept)
    assert saved["step"] % 5 == 0 and not list(tmp_path.glob(".*.tmp*")) and not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("after_s", [0.15, 0.4, 0.8, 1.5])
def test_a_signal_during_start_up_is_one_line(tmp_path, signum, after_s):
    """From the first moments (imports, data, model) on: one line, 143/130, and no claim of a checkpoint."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = ["train", "--model", "mlp", "--data", "healthcare-sim:n=20000", "--epochs", "1", "--threads", "1",
            "--out", str(tmp_path), "--quiet"]
    process = subprocess.Popen([sys.executable, "-m", "leantrain", *args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(after_s)
    process.send_signal(signum)
    _, err = process.communicate(timeout=30)
    how = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    kept = [p for p in tmp_path.glob("*.ckpt") if not p.name.startswith(".")]
    tail = f"the last checkpoint is kept for --resume: {kept[0]}" if kept else "no checkpoint was written"
    assert (process.returncode, err.strip()) == (128 + signum, f"leantrain: {how}; {tail}"), after_s
    assert not list(tmp_path.glob("*.json"))


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    with pytest.raises(KeyboardInterrupt):
        lt.fit(tiny_model(), tiny_data(), techniques=[StopAtStep(4)], checkpoint_dir=tmp_path, **OPTIONS)
    ckpt = resume_checkpoint(tmp_path, None)
    before = ckpt.read_bytes()

    def no_space(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio, "_fsync_file", no_space)
    with pytest.raises(lt.UsageError, match=f"no space left on the device writing .*{ckpt.name}") as error:
        lt.fit(tiny_model(), tiny_data(), checkpoint_dir=tmp_path, resume=True, **OPTIONS)
    assert "\n" not in str(error.value)
    assert ckpt.read_bytes() == before and not list(tmp_path.glob(".*.tmp*"))


def test_a_full_disk_writing_a_result_is_one_line(tmp_path, monkeypatch):
    real = fileio._fsync_file

    def no_space_for_json(path):
        if path.suffix == ".json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path)

    monkeypatch.setattr(fileio, "_fsync_file", no_space_for_json)
    result = cli("train", "--model", "mlp", "--data", "healthcare-sim:n=300", "--epochs", "1", "--quiet",
                 "--out", str(tmp_path))
    assert result.returncode == 2 and "no space left" in one_line_error(result.stderr)
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob(".*.tmp*"))
