"""evaluate: exact match, token accuracy, by kind and length, mistakes written; predict: one line out per line
in, in order, across batches, and a bad line stops with its number after the lines before it are written."""
import io

import pytest

from leantrain.cli import main
from leantrain.errors import UsageError
from leantrain.inference.evaluate import score
from leantrain.inference.lines import LineDecoder
from leantrain.inference.model_file import load_model
from leantrain.inference.predict import predict_stream

LINES = ["(o-2)*(3*o+31)=3*o**2+25*o-62", "(h+21)*(h+29)=h**2+50*h+609", "(sin(x)+1)**2=sin(x)**2+2*sin(x)+1"]


def test_score_counts_exact_match_token_accuracy_kinds_and_lengths():
    pairs = [tuple(line.split("=")) for line in LINES]
    ev = score(pairs, ["3*o**2+25*o-62", "h**2+50*h+608", "sin(x)**2+2*sin(x)+1"])
    assert ev.overall.exact == 2 and ev.overall.lines == 3
    assert ev.by_kind["bare"].lines == 2 and ev.by_kind["trig"].exact_match == 1.0
    assert sum(t.lines for t in ev.by_length.values()) == 3
    assert ev.positions == sum(len(p[1]) + 1 for p in pairs) and ev.positions_right == ev.positions - 1
    assert ev.mistakes == [("(h+21)*(h+29)", "h**2+50*h+609", "h**2+50*h+608")]


def test_evaluate_on_a_file_prints_the_table_and_writes_the_mistakes(model_file, tmp_path, capsys):
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(LINES) + "\n")
    mistakes = tmp_path / "wrong.txt"
    assert main(["evaluate", str(model_file), "--data", f"polynomial-file:path={lines}", "--mistakes", str(mistakes)]) == 0
    out = capsys.readouterr().out
    assert "Exact match" in out and "| kind trig | 1 |" in out
    assert len(mistakes.read_text().splitlines()) == 3  # an untrained model gets none right
    assert mistakes.read_text().startswith(LINES[0] + "\t")


@pytest.mark.parametrize("bad,message", [("(a+1)*(a+2)", "line 2: '(a+1)*(a+2)' is not FACTORED=EXPANDED"),
                                         ("(b+1)*(b+2)=b**2+3*b+2", "line 2: '(b+1)*(b+2)': characters 'b'"),
                                         ("(" * 40 + "=a", "line 2: the factored side is 40 characters")])
def test_evaluate_names_the_file_and_line_of_a_bad_line(model_file, tmp_path, capsys, bad, message):
    lines = tmp_path / "lines.txt"
    lines.write_text(f"{LINES[0]}\n{bad}\n")
    assert main(["evaluate", str(model_file), "--data", f"polynomial-file:path={lines}"]) == 2
    assert f"{lines} {message}" in capsys.readouterr().err


def test_predict_streams_one_line_per_line_in_order_across_batches(model_file):
    sources = [line.split("=")[0] for line in LINES] * 3
    decoder = LineDecoder(load_model(model_file), batch_size=2)
    expected = LineDecoder(load_model(model_file), batch_size=100).predict(sources)
    out = io.StringIO()
    text = "\n".join(sources[:4]) + "\n\n" + "\n".join(sources[4:]) + "\n"
    assert predict_stream(decoder, io.StringIO(text), out, "in") == len(sources) + 1
    assert out.getvalue().split("\n")[:-1] == expected[:4] + [""] + expected[4:]


def test_predict_uncached_writes_the_same_lines(model_file):
    sources = [line.split("=")[0] for line in LINES]
    cached = LineDecoder(load_model(model_file)).predict(sources)
    assert LineDecoder(load_model(model_file), cache=False).predict(sources) == cached
    assert len(set("".join(cached))) > 3


def test_predict_keeps_the_lines_before_a_malformed_one(model_file):
    decoder = LineDecoder(load_model(model_file), batch_size=10)
    out = io.StringIO()
    with pytest.raises(UsageError, match=r"^in line 3: '\(Q\+1\)': characters 'Q'"):
        predict_stream(decoder, io.StringIO("(a+1)*(a+2)\n(s+3)**2\n(Q+1)\n(a+5)\n"), out, "in")
    assert len(out.getvalue().splitlines()) == 2


def test_predict_cli_reads_a_file_and_fails_in_one_line(model_file, tmp_path, capsys):
    good = tmp_path / "in.txt"
    good.write_text("(a+1)*(a+2)\n" + "a" * 40 + "\n")
    assert main(["predict", str(model_file), str(good)]) == 2
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1
    expected = f"{good} line 2: the factored side is 40 characters, longer than the model's maximum of 29"
    assert captured.err.strip() == f"leantrain: error: {expected}"


def test_evaluate_takes_a_beam(model_file, tmp_path, capsys):
    lines = tmp_path / "lines.txt"
    lines.write_text("(o-2)*(3*o+31)=3*o**2+25*o-62\n")
    assert main(["evaluate", str(model_file), "--data", f"polynomial-file:path={lines}", "--beam", "3"]) == 0
    assert "beam 3" in capsys.readouterr().out
    assert main(["evaluate", str(model_file), "--data", f"polynomial-file:path={lines}", "--beam", "0"]) == 2
    assert "beam must be a positive integer" in capsys.readouterr().err
