"""With no model named, predict and evaluate use the model leantrain ships; fp16 model files load back exactly."""
import io
import subprocess
import sys

import pytest
import torch

from leantrain.cli import main
from leantrain.errors import UsageError
from leantrain.inference import shipped
from leantrain.inference.lines import LineDecoder
from leantrain.inference.model_file import load_model, save_model
from leantrain.inference.predict import predict_stream

LINES = ["(o-2)*(3*o+31)", "(h+21)*(h+29)", "(sin(x)+1)**2"]


def _expected(model_file):
    out = io.StringIO()
    predict_stream(LineDecoder(load_model(model_file)), LINES, out, "test")
    return out.getvalue()


def test_predict_with_no_model_named_uses_the_shipped_one_on_stdin_or_a_file(model_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shipped, "shipped_path", lambda: model_file)
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(LINES) + "\n"))
    assert main(["predict"]) == 0
    assert capsys.readouterr().out == _expected(model_file)
    lines = tmp_path / "lines.txt"  # not a .pt file: read as the input, with the shipped model
    lines.write_text("\n".join(LINES) + "\n")
    assert main(["predict", str(lines)]) == 0
    assert capsys.readouterr().out == _expected(model_file)


def test_evaluate_with_no_model_named_writes_its_mistakes_here_not_into_the_package(model_file, tmp_path, monkeypatch,
                                                                                      capsys):
    monkeypatch.setattr(shipped, "shipped_path", lambda: model_file)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    lines = tmp_path / "lines.txt"
    lines.write_text("(h+21)*(h+29)=h**2+50*h+609\n")
    assert main(["evaluate", "--data", f"polynomial-file:path={lines}"]) == 0
    assert "Exact match" in capsys.readouterr().out
    assert (work / "run.mistakes.txt").is_file()


def test_no_shipped_model_is_one_line_naming_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shipped, "shipped_path", lambda: tmp_path / "absent.model.pt")
    monkeypatch.setattr("sys.stdin", io.StringIO("(x+1)*(x-2)\n"))
    assert main(["predict"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("leantrain: error: no model named and no shipped model at") and "\n" not in err


def test_fp16_weights_halve_the_file_and_load_back_into_fp32(model_file, tmp_path):
    saved = load_model(model_file)
    from leantrain import data

    half = save_model(tmp_path / "half.model.pt", saved.model, model_spec=saved.model_spec, data_spec=saved.data_spec,
                      data=data.load("polynomial:n=40"), weights_dtype=torch.float16)
    assert half.stat().st_size < 0.6 * model_file.stat().st_size
    loaded = load_model(half).model
    for (name, a), b in zip(saved.model.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == a.dtype, name
        torch.testing.assert_close(b, a.half().to(a.dtype), rtol=0, atol=0)


def test_the_shipped_model_expands_the_issues_line_piped_to_predict():
    path = shipped.shipped_path()
    assert path.is_file() and path.stat().st_size <= 10_000_000  # in the package, within what the repository carries
    done = subprocess.run([sys.executable, "-m", "leantrain", "predict"], input="(x+1)*(x-2)\n", capture_output=True,
                          text=True, timeout=120)
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "x**2-x-2\n")


def test_predict_gives_a_polynomial_model_the_product_as_its_data_write_it(model_file):
    """(x+1)*(x-2) is the same product as the data's (x-2)*(x+1), in an order the model never saw in training."""
    decoder, seen = LineDecoder(load_model(model_file)), []
    decoder.predict = lambda texts: seen.extend(texts) or ["" for _ in texts]
    predict_stream(decoder, ["(x+1)*(x-2)", "(h+21)*(h+29)=h**2+50*h+609", "(x+1)*(x+1)"], io.StringIO(), "test")
    assert seen == ["(x-2)*(x+1)", "(h+21)*(h+29)", "(x+1)**2"]
    for other in ("text-pairs:path=pairs.txt", "polynomial:path=own.txt"):  # other text, or a file's own order
        decoder.saved.data_spec, seen[:] = other, []
        predict_stream(decoder, ["(x+1)*(x-2)"], io.StringIO(), "test")
        assert seen == ["(x+1)*(x-2)"]
    decoder.saved.data_spec, seen[:] = "polynomial:n=40", []
    with pytest.raises(UsageError, match="line 2"):  # a bad line after a good one: the good one is still decoded
        predict_stream(decoder, ["(x+1)*(x-2)", "x*()#"], io.StringIO(), "test")
    assert seen == ["(x-2)*(x+1)"]
