"""Names that would break file names or leave --out, and inputs that can only fail late, fail first in one line."""
import pytest

import leantrain as lt
from tests.faults.helpers import cli, one_line_error, tiny_data, tiny_model

pytestmark = pytest.mark.timeout(60)
TINY = ["--model", "mlp", "--data", "healthcare-sim:n=300", "--epochs", "1", "--quiet"]


def _polynomial_file(folder):
    lines = ["(x+1)*(x-1)=x**2-1", "(x+2)*(x+3)=x**2+5*x+6", "x*(x+1)=x**2+x", "(x-2)**2=x**2-4*x+4"] * 10
    path = folder / "deeply" / "nested" / "train.txt"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_data_set_given_by_absolute_path_gets_a_safe_file_name(tmp_path):
    path = _polynomial_file(tmp_path)
    out = tmp_path / "out"
    result = cli("train", "--model", "seq2seq:emb=8,hidden=8", "--data", f"polynomial:path={path},n=0", "--epochs", "2",
                 "--checkpoint-every", "1", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    (record,) = out.glob("*.json")
    assert "/" not in record.stem and record.stem.startswith("polynomial_pathtrain.txt-") and len(record.name) < 100
    assert [p for p in out.rglob("*") if not p.name.startswith(".")] == [record]  # nothing in sub-folders


@pytest.mark.parametrize("name,expected", [
    ("../x", "plain file name"), ("a/b", "plain file name"), ("..", "plain file name"), (".hidden", "plain file name"),
    ("x" * 300, "bytes long"), ("a\x00b", "NUL byte"), ("tab\there", "control characters"),
])
def test_a_run_name_cannot_leave_out_or_break_the_file_system(tmp_path, name, expected):
    result = cli("train", *TINY, "--run-name", name, "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and expected in one_line_error(result.stderr)
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("label", ["../escape", "/abs", "x" * 200])
def test_experiment_labels_cannot_write_outside_out(tmp_path, label):
    toml = tmp_path / "exp.toml"
    toml.write_text(f'[experiment]\nname = "e"\n[[cases]]\nlabel = "{label}"\nmodel = "mlp"\n'
                    'data = "healthcare-sim:n=300"\nepochs = 1\n')
    result = cli("run", str(toml), "--out", str(tmp_path / "out"), "--quiet")
    assert result.returncode == 2 and "run name" in one_line_error(result.stderr)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("*.json"))


def test_a_model_that_does_not_fit_the_data_fails_before_any_output(tmp_path):
    # an MLP built for 64 features, fed byte-token windows of another data set by lt.fit
    data = lt.data.load("wikitext-sim")
    with pytest.raises(lt.UsageError, match="does not fit data"):
        lt.fit(tiny_model(), data, checkpoint_dir=tmp_path / "out", epochs=1)
    assert not (tmp_path / "out").exists()


def test_an_experiment_whose_model_does_not_fit_fails_before_the_first_run(tmp_path):
    toml = tmp_path / "exp.toml"
    toml.write_text('[experiment]\nname = "e"\n[[cases]]\nmodel = "mlp"\ndata = "healthcare-sim:n=300"\nepochs = 1\n'
                    '[[cases]]\nmodel = "cnn"\ndata = "healthcare-sim:n=300"\nepochs = 1\n')
    result = cli("run", str(toml), "--out", str(tmp_path / "out"), "--quiet")
    assert result.returncode == 2 and "cnn" in one_line_error(result.stderr)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text,expected", [
    ("", "is empty"), ("\n# only a comment\n", "is empty"),
    ('[experiment]\nname = "e"\ntarget_tolerance = nan\n', "target_tolerance must be a number >= 0"),
    ('[experiment]\nname = "e"\ntarget_tolerance = inf\n', "target_tolerance must be a number >= 0"),
    ('[experiment]\nname = "e"\ntarget = nan\n', "target must be a number"),
    ('[experiment]\nname = "e"\ncases = []\n', "unknown key"),
    ('cases = []\n', "no runs"),
    ('[experiment]\nseeds = [99999999999999999999]\n', "seed must be an integer"),
])
def test_bad_experiment_files_are_refused_in_one_line(tmp_path, text, expected):
    toml = tmp_path / "exp.toml"
    toml.write_text(text)
    result = cli("run", str(toml), "--out", str(tmp_path / "out"), "--quiet")
    assert result.returncode == 2 and expected in one_line_error(result.stderr)


@pytest.mark.parametrize("seed", ["-1", "4294967296", "9" * 40])
def test_a_huge_or_negative_seed_is_one_line(tmp_path, seed):
    result = cli("train", *TINY, "--seed", seed, "--out", str(tmp_path))
    assert result.returncode == 2 and "seed must be an integer in 0.." in one_line_error(result.stderr)


@pytest.mark.parametrize("kwargs,expected", [
    ({"epochs": "3"}, "epochs must be an integer"), ({"epochs": 0}, "epochs must be a positive"),
    ({"batch_size": -1}, "batch_size must be a positive"), ({"lr": float("nan")}, "lr"),
    ({"techniques": "bf16"}, "techniques must be a list"), ({"techniques": [object()]}, "techniques must be a list"),
    ({"checkpoint_dir": 3}, "checkpoint_dir must be a path"), ({"optimiser": "adam"}, "unknown key 'optimiser'"),
    ({"on_nonfinite": "ignore"}, "on_nonfinite"),
])
def test_fit_bad_arguments_raise_usage_error(kwargs, expected):
    with pytest.raises(lt.UsageError, match=expected):
        lt.fit(tiny_model(), tiny_data(), **kwargs)


def test_fit_refuses_a_model_without_trainable_parameters():
    model = tiny_model().requires_grad_(False)
    with pytest.raises(lt.UsageError, match="no trainable parameters"):
        lt.fit(model, tiny_data())


def test_fit_records_the_users_model_class_and_data_shape():
    record = lt.fit(tiny_model(), tiny_data(n=100), epochs=1)
    assert record["run"]["model"] == "MLP" and record["run"]["data_shape"] == [12]
