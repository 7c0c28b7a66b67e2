"""Every bad input: a one-line message naming the bad value, exit code 2, no traceback, no partial results."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from leantrain.cli import main

TINY = ["--data", "healthcare-sim:n=400", "--epochs", "1", "--quiet"]


def _fails(capsys, argv, expected, out_dir=None):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("leantrain: error:") and "\n" not in err and "Traceback" not in err
    assert expected in err, err
    if out_dir is not None:
        assert not Path(out_dir).exists() or not any(Path(out_dir).iterdir())


@pytest.mark.parametrize("argv,expected", [
    (["--model", "resnet9000"], "unknown model 'resnet9000'; choose one of:"),
    (["--data", "cifar100"], "unknown data set 'cifar100'; choose one of:"),
    (["--epochs", "0"], "epochs must be a positive integer, got 0"),
    (["--batch-size", "-8"], "batch_size must be a positive integer, got -8"),
    (["--lr", "0"], "lr must be > 0, got 0.0"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    pytest.param(["--device", "cuda"], "CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    (["--lr", "inf"], "lr = inf must be a finite number"),
    (["--data", "imagenet-sim:n=-5"], "n=-5 must be at least 2"),
    (["--data", "healthcare-sim:n=300,val_fraction=0"], "leaves an empty split"),
    (["--model", "mlp:hidden=0"], "hidden=0 and depth=1 must be at least 1"),
    (["--model", "mlp:dropout=1.5"], "dropout=1.5 must be in [0, 1)"),
    (["--data", "digits-image", "--model", "gpt2-tiny"], "gpt2"),
    (["--precision", "fp8"], "invalid choice: 'fp8'"),
    (["--epochs", "many"], "invalid int value: 'many'"),
    (["--trim-padding", "true"], "trim_padding needs padded token sequences held in memory (seq2seq data such as "
                                 "polynomial); data healthcare-sim has none"),
])
def test_bad_train_values(capsys, tmp_path, argv, expected):
    out = tmp_path / "out"
    _fails(capsys, ["train", *TINY, "--out", str(out), *argv], expected, out)


def test_unwritable_output_folder(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _fails(capsys, ["train", *TINY, "--out", str(blocker / "sub")], "is not writable")


def test_missing_and_malformed_experiment_files(capsys, tmp_path):
    _fails(capsys, ["run", str(tmp_path / "nope.toml")], "does not exist")
    bad = tmp_path / "bad.toml"
    bad.write_text("[experiment\nname = 1")
    _fails(capsys, ["run", str(bad), "--out", str(tmp_path / "r1")], "malformed TOML", tmp_path / "r1")


def test_unknown_keys_and_bad_values_in_toml_stop_before_any_output(capsys, tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text('[experiment]\nname="e"\n[defaults]\ndata="healthcare-sim:n=300"\nepochs=1\n'
                   '[recipes.a]\nbatch_size=8\n[recipes.b]\nbatch_sise=8\n')
    _fails(capsys, ["run", str(exp), "--out", str(tmp_path / "r")], "recipe 'b'): unknown key 'batch_sise'", tmp_path / "r")
    exp.write_text('[experiment]\nname="e"\ncolour="red"\n')
    _fails(capsys, ["run", str(exp)], "unknown key 'colour'")
    exp.write_text('[experiment]\nname="e"\n[defaults]\nepochs="five"\n')
    _fails(capsys, ["run", str(exp)], "epochs = 'five' should be int")


def test_corrupt_or_missing_checkpoint_for_resume(capsys, tmp_path):
    _fails(capsys, ["train", "--resume", str(tmp_path / "none")], "no such folder")
    (tmp_path / "run.ckpt").write_bytes(b"\x00garbage")
    _fails(capsys, ["train", "--resume", str(tmp_path)], "is corrupt or not a leantrain checkpoint")
    _fails(capsys, ["train", "--resume", str(tmp_path), "--epochs", "3"], "drop --epochs")


def test_report_of_a_folder_without_records(capsys, tmp_path):
    _fails(capsys, ["report", str(tmp_path)], "holds no run records")


def test_train_writes_one_json_record(capsys, tmp_path):
    assert main(["train", *TINY, "--out", str(tmp_path)]) == 0
    (record,) = tmp_path.glob("*.json")
    assert json.loads(record.read_text())["run"]["data"] == "healthcare-sim"
    assert not list(tmp_path.glob("*.ckpt")) and not list(tmp_path.glob(".*tmp*"))


def test_python_dash_m_entry_point_prints_one_line_without_traceback():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-m", "leantrain", "train", "--model", "nope"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_list_shows_models_data_sets_and_techniques(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "mlp" in out and "imagenet-sim" in out and "digits" in out and "precision" in out


def test_boolean_flags_parse_true_and_false(capsys, tmp_path):
    from leantrain.cli import build_parser

    assert build_parser().parse_args(["train", "--compile", "false"]).compile is False
    assert build_parser().parse_args(["train", "--compile", "true"]).compile is True
    _fails(capsys, ["train", "--compile", "maybe"], "'maybe' is not true or false")


def test_a_late_case_whose_model_does_not_fit_its_data_fails_before_any_output(capsys, tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text('[experiment]\nname="e"\n[defaults]\nepochs=1\ndata="healthcare-sim:n=300"\n'
                   '[[cases]]\nmodel="mlp"\n[[cases]]\nmodel="gpt2-tiny"\n')
    _fails(capsys, ["run", str(exp), "--out", str(tmp_path / "r")], "case 'healthcare-sim-gpt2-tiny'", tmp_path / "r")


def test_experiment_names_must_be_plain_folder_names(capsys, tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text('[experiment]\nname="../../x"\n')
    _fails(capsys, ["run", str(exp)], "name must be a plain folder name")
    exp.write_text('[experiment]\nname="e"\ndescription=3\n')
    _fails(capsys, ["run", str(exp)], "description must be a string")
    exp.write_text('[experiment]\nname="e"\n[recipes.a]\ncases="x"\n')
    _fails(capsys, ["run", str(exp)], "cases must be a list of case labels")


def test_a_data_set_that_cannot_be_read_leaves_no_output_folder(capsys, tmp_path):
    _fails(capsys, ["train", "--data", f"mnist:path={tmp_path / 'none'}", "--out", str(tmp_path / "o")], "expected MNIST IDX files",
           tmp_path / "o")
