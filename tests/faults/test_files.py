"""Results are never overwritten or lost; checkpoints are verified; a killed writer's leftovers are harmless."""
import json
import os
import threading

import pytest
import torch

import leantrain as lt
from leantrain.experiments.results import load_runs
from leantrain.train import checkpoint
from leantrain.train.run_identity import resume_checkpoint, run_lock
from tests.faults.helpers import StopAtStep, cli, one_line_error, tiny_data, tiny_model

pytestmark = pytest.mark.timeout(60)
TINY = ["--model", "mlp", "--data", "healthcare-sim:n=300", "--epochs", "1", "--quiet"]


def _interrupted(folder, at_step=5):
    with pytest.raises(KeyboardInterrupt):
        lt.fit(tiny_model(), tiny_data(), techniques=[StopAtStep(at_step)], checkpoint_dir=folder,
               checkpoint_every="2", epochs=2, batch_size=16)
    return resume_checkpoint(folder, None)


def test_two_runs_with_different_settings_in_one_folder_write_different_files(tmp_path):
    assert cli("train", *TINY, "--out", str(tmp_path)).returncode == 0
    assert cli("train", *TINY, "--lr", "0.01", "--out", str(tmp_path)).returncode == 0
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert len(names) == 2 and names[0].rsplit("-", 1)[0] == names[1].rsplit("-", 1)[0]  # same stem, other hash


def test_a_rerun_refuses_to_overwrite_and_force_allows(tmp_path):
    assert cli("train", *TINY, "--out", str(tmp_path)).returncode == 0
    (result,) = tmp_path.glob("*.json")
    before = result.read_bytes()
    again = cli("train", *TINY, "--out", str(tmp_path))
    assert again.returncode == 2 and "already exists; pass --force" in one_line_error(again.stderr)
    assert result.read_bytes() == before
    assert cli("train", *TINY, "--out", str(tmp_path), "--force").returncode == 0


def test_a_fresh_run_never_replaces_an_interrupted_runs_checkpoint(tmp_path):
    ckpt = _interrupted(tmp_path)
    before = ckpt.read_bytes()
    with pytest.raises(lt.UsageError, match="holds an interrupted run; continue it with --resume"):
        lt.fit(tiny_model(), tiny_data(), checkpoint_dir=tmp_path, checkpoint_every="2", epochs=2, batch_size=16)
    assert ckpt.read_bytes() == before


def test_a_concurrent_run_into_the_same_run_fails_with_one_line(tmp_path):
    run_name = "shared"
    held, release = threading.Event(), threading.Event()

    def holder():
        with run_lock(tmp_path, run_name):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    try:
        second = cli("train", *TINY, "--run-name", run_name, "--out", str(tmp_path))
    finally:
        release.set()
        thread.join()
    line = one_line_error(second.stderr)
    assert second.returncode == 2 and f"being written by another process (pid {os.getpid()})" in line
    assert not list(tmp_path.glob("*.json"))
    assert cli("train", *TINY, "--run-name", run_name, "--out", str(tmp_path)).returncode == 0  # released


@pytest.mark.parametrize("damage", ["bitflip", "truncate", "empty", "garbage"])
def test_a_damaged_checkpoint_is_named_not_loaded(tmp_path, damage):
    ckpt = _interrupted(tmp_path)
    data = bytearray(ckpt.read_bytes())
    if damage == "bitflip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) // 3]
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"\x00not a checkpoint")
    ckpt.write_bytes(bytes(data))
    result = cli("train", "--resume", str(tmp_path))
    line = one_line_error(result.stderr)
    assert result.returncode == 2 and str(ckpt) in line and "corrupt" in line


def test_a_killed_writers_temporary_never_blocks_resume_and_is_cleaned(tmp_path):
    ckpt = _interrupted(tmp_path)
    stale = tmp_path / f".{ckpt.stem}.tmp99999.ckpt"
    stale.write_bytes(ckpt.read_bytes()[:100])  # what a SIGKILL mid-write leaves
    assert resume_checkpoint(tmp_path, None) == ckpt
    lt.fit(tiny_model(), tiny_data(), checkpoint_dir=tmp_path, checkpoint_every="2", epochs=2, batch_size=16,
           resume=True)
    assert not stale.exists() and not list(tmp_path.glob("*.ckpt")) and len(list(tmp_path.glob("*.json"))) == 1


def test_report_skips_temporaries_and_names_a_malformed_record(tmp_path, capsys):  # noqa: ARG001
    assert cli("train", *TINY, "--out", str(tmp_path)).returncode == 0
    (good,) = tmp_path.glob("*.json")
    (tmp_path / f".{good.stem}.tmp123.json").write_text(good.read_text())  # a half-renamed copy
    (tmp_path / "broken.json").write_text('{"schema": 1, "run": ')
    (tmp_path / "wrong.json").write_text(json.dumps({"schema": 1, "run": {}, "env": {}, "epochs": 3, "summary": {}}))
    capsys.readouterr()
    runs = load_runs(tmp_path)
    err = capsys.readouterr().err
    assert len(runs) == 1
    assert "skipping" in err and "broken.json" in err and "wrong.json" in err and "Traceback" not in err
    result = cli("report", str(tmp_path))
    assert result.returncode == 0 and "broken.json" in result.stderr


def test_run_resume_reuses_a_record_only_when_its_settings_match(tmp_path):
    toml = tmp_path / "exp.toml"
    toml.write_text('[experiment]\nname = "e"\n[defaults]\nmodel = "mlp"\ndata = "healthcare-sim:n=300"\nepochs = 1\n')
    out = tmp_path / "out"
    assert cli("run", str(toml), "--out", str(out), "--quiet").returncode == 0
    again = cli("run", str(toml), "--out", str(out), "--quiet")
    assert again.returncode == 2 and "already exists" in one_line_error(again.stderr)
    assert cli("run", str(toml), "--out", str(out), "--resume", "--quiet").returncode == 0
    toml.write_text(toml.read_text().replace("epochs = 1", "epochs = 2\nlr = 0.01"))
    stale = cli("run", str(toml), "--out", str(out), "--resume", "--quiet")
    line = one_line_error(stale.stderr)
    assert stale.returncode == 2 and "other settings (epochs, lr)" in line
    assert cli("run", str(toml), "--out", str(out), "--force", "--quiet").returncode == 0
    (record,) = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert record["run"]["config"]["epochs"] == 2


def test_checkpoints_carry_a_checksum_header(tmp_path):
    ckpt = _interrupted(tmp_path)
    header = ckpt.read_bytes().split(b"\n", 1)[0]
    assert header.startswith(b"LEANTRAIN-CHECKPOINT 2 sha256=")
    assert isinstance(checkpoint.load(ckpt)["model"], dict) and torch.is_tensor(next(iter(checkpoint.load(ckpt)["model"].values())))
