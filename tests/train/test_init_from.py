"""init_from: a run starts from a saved model file's weights (an fp16 file into fp32 weights), the record names the
file by checksum, a resume keeps that without the file; a file that does not fit is one line and writes nothing."""
import hashlib
import json

import pytest
import torch

import leantrain as lt
from leantrain.cli import main
from leantrain.inference.model_file import save_model
from leantrain.models import build
from tests.train.test_resume import Crash

MODEL = "seq2seq-transformer:d_model=32,heads=2,encoder_layers=1,decoder_layers=1,ff=64"
DATA = "polynomial:n=200"


def _train(out, name, *flags):
    return main(["train", "--model", MODEL, "--data", DATA, "--epochs", "1", "--batch-size", "32", "--run-name", name,
                 "--out", str(out), "--quiet", *flags])


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_the_run_starts_from_the_files_weights_and_the_record_names_the_file(tmp_path):
    assert _train(tmp_path, "first", "--save-model") == 0
    half = tmp_path / "half.model.pt"  # an fp16 file, as the shipped model is
    data = lt.data.load(DATA)
    save_model(half, _weights(tmp_path / "first.model.pt"), model_spec=MODEL, data_spec=DATA, data=data,
               weights_dtype=torch.float16)
    # lr ~0: what a run ends with is what it started from
    assert _train(tmp_path, "from-file", "--save-model", "--lr", "1e-12", "--init-from", str(half)) == 0
    assert _train(tmp_path, "fresh", "--save-model", "--lr", "1e-12") == 0
    started, fresh = _weights(tmp_path / "from-file.model.pt"), _weights(tmp_path / "fresh.model.pt")
    for key, value in _weights(half).items():
        assert started[key].dtype == fresh[key].dtype  # the run's own dtype, not the file's
        assert torch.allclose(started[key], value.to(started[key].dtype), atol=1e-6), key
    assert any(not torch.allclose(fresh[k], v.to(fresh[k].dtype), atol=1e-3) for k, v in _weights(half).items()
               if v.is_floating_point())
    record = json.loads((tmp_path / "from-file.json").read_text())
    assert record["run"]["initialized_from"] == {
        "path": str(half), "sha256": hashlib.sha256(half.read_bytes()).hexdigest(), "model_spec": MODEL,
        "data_spec": DATA, "record": None}
    assert record["run"]["config"]["init_from"] == str(half)
    assert "initialized_from" not in json.loads((tmp_path / "fresh.json").read_text())["run"]


def test_a_resume_takes_the_checkpoints_weights_and_keeps_what_they_started_from(tmp_path):
    data = lt.data.load("healthcare-sim:n=600")
    torch.manual_seed(0)
    source = save_model(tmp_path / "source.model.pt", build("mlp", data), model_spec="mlp", data_spec="x", data=data)
    options = dict(epochs=3, batch_size=64, seed=5, init_from=str(source))
    whole = lt.fit(build("mlp", data), data, checkpoint_dir=tmp_path / "whole", **options)
    with pytest.raises(KeyboardInterrupt):
        lt.fit(build("mlp", data), data, checkpoint_dir=tmp_path / "part", techniques=[Crash(2)], **options)
    checksum = hashlib.sha256(source.read_bytes()).hexdigest()
    source.unlink()  # the checkpoint holds the weights: the file is not read again
    resumed = lt.fit(build("mlp", data), data, checkpoint_dir=tmp_path / "part", resume=True, **options)
    assert [e["val_loss"] for e in resumed["epochs"]] == [e["val_loss"] for e in whole["epochs"]]
    assert resumed["run"]["initialized_from"]["sha256"] == checksum


def test_a_file_that_does_not_fit_is_one_line_and_writes_nothing(tmp_path, capsys):
    assert _train(tmp_path / "src", "first", "--save-model") == 0
    source = tmp_path / "src" / "first.model.pt"
    other_vocab = tmp_path / "vocab.model.pt"
    payload = torch.load(source, weights_only=True)
    payload["info"]["vocab"] = list(reversed(payload["info"]["vocab"]))
    torch.save(payload, other_vocab)
    wider = MODEL.replace("d_model=32", "d_model=64")
    cases = [
        (["--init-from", str(source), "--model", wider], "do not fit this run's model"),
        (["--init-from", str(other_vocab)], "vocabularies differ"),
        (["--init-from", str(tmp_path / "missing.model.pt")], "init_from:"),
        (["--init-from", str(source), "--parallel", "ensemble"], "ensemble"),
        (["--init-from", ""], "empty path"),
    ]
    for flags, said in cases:
        out = tmp_path / "out"
        assert _train(out, "run", *flags) == 2, flags
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and said in err, err
        assert not out.exists() or not list(out.glob("*.json")), flags


def test_one_file_is_one_setting_however_it_is_spelled_and_complexity_matching_refuses_it(tmp_path):
    from leantrain.config import RunConfig
    from leantrain.errors import UsageError

    plain = RunConfig.from_dict({"init_from": "runs/a.model.pt"})
    assert RunConfig.from_dict({"init_from": "./runs//a.model.pt"}).run_name == plain.run_name
    assert RunConfig(init_from=tmp_path / "a.model.pt").validated().init_from == str(tmp_path / "a.model.pt")
    with pytest.raises(UsageError, match="complexity matching starts narrow from fresh weights"):
        RunConfig.from_dict({"init_from": "a.model.pt", "complexity": "match"})


def test_a_resume_under_another_init_from_names_both(tmp_path):
    data = lt.data.load("healthcare-sim:n=400")
    source = save_model(tmp_path / "source.model.pt", build("mlp", data), model_spec="mlp", data_spec="x", data=data)
    with pytest.raises(KeyboardInterrupt):
        lt.fit(build("mlp", data), data, checkpoint_dir=tmp_path, techniques=[Crash(1)], epochs=2, init_from=source)
    with pytest.raises(lt.UsageError, match=r"other settings \(init_from\): init_from '.*source.model.pt' there, "
                                            r"'elsewhere.model.pt' here"):
        lt.fit(build("mlp", data), data, checkpoint_dir=tmp_path, resume=True, epochs=2, init_from="elsewhere.model.pt")
