"""The saved model file: one self-describing file, loaded with weights_only, rebuilding the same model; a file
that is not ours or is cut short is one clear error naming it (exit 2 from the CLI)."""
import torch

from leantrain.cli import main
from leantrain.data.polynomial import VOCAB
from leantrain.inference.model_file import load_model


def test_round_trip_rebuilds_the_same_model_and_says_what_it_is(model_file):
    saved = load_model(model_file)
    payload = torch.load(model_file, weights_only=True)
    assert saved.model_spec == "seq2seq:emb=8,hidden=16" and saved.data_spec == "polynomial:n=40"
    assert saved.vocab == VOCAB and saved.record == "run.json"
    for key, value in saved.model.state_dict().items():
        assert torch.equal(value, payload["state_dict"][key])
    src = torch.randint(3, len(VOCAB), (4, saved.model.src_len))
    assert torch.equal(saved.model.generate(src), load_model(model_file.parent).model.generate(src))  # by folder


def test_a_file_that_is_not_ours_or_truncated_is_one_line_exit_2(model_file, tmp_path, capsys):
    cut = tmp_path / "cut.model.pt"
    cut.write_bytes(model_file.read_bytes()[:4000])
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    for path in (cut, other, text, tmp_path / "missing.pt"):
        assert main(["predict", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err


def test_train_save_model_writes_the_file_and_the_record_names_it(tmp_path, capsys):
    import json

    out = tmp_path / "out"
    assert main(["train", "--model", "seq2seq:emb=8,hidden=16", "--data", "polynomial:n=64", "--epochs", "1",
                 "--batch-size", "32", "--run-name", "r", "--out", str(out), "--save-model", "--quiet"]) == 0
    record = json.loads((out / "r.json").read_text())
    assert record["run"]["model_file"] == "r.model.pt"
    assert load_model(out).record == "r.json"
