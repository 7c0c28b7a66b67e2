"""A hand-edited or damaged run record: `report` and `run --resume` name it in one warning line, leave it out and go on."""
import json
import shutil

import pytest

from tests.faults.helpers import cli

EXPERIMENT = """
[experiment]
name = "tiny"
seeds = [0, 1]

[defaults]
data = "healthcare-sim:n=300"
epochs = 2
batch_size = 64
threads = 1
"""
BAD = "healthcare-sim-mlp-default-s1.json"


def _set(*keys, value):
    """An edit that puts ``value`` at ``record[keys[0]][keys[1]]...``."""
    def edit(record):
        for key in keys[:-1]:
            record = record[key]
        record[keys[-1]] = value
    return edit


CASES = {
    "val_acc a string": (_set("epochs", 1, "val_acc", value="abc"), 'epoch 2\'s val_acc is "abc", not a number'),
    "val_acc null": (_set("epochs", 0, "val_acc", value=None), "epoch 1's val_acc is null, not a number"),
    "no epochs": (_set("epochs", value=[]), "epochs must be a non-empty list"),
    "empty summary": (_set("summary", value={}), "summary lacks mean_epoch_time_s"),
    "time_s null": (_set("epochs", 0, "time_s", value=None), "epoch 1's time_s is null, not a number"),
    "run.name an integer": (_set("run", "name", value=5), "run's name is 5, not a non-empty string"),
    "not JSON": (None, "not a readable run record"),
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("malformed")
    (folder / "tiny.toml").write_text(EXPERIMENT)
    result = cli("run", str(folder / "tiny.toml"), "--out", str(folder / "results"), "--quiet")
    assert result.returncode == 0, result.stderr
    return folder


def _damaged(finished, tmp_path, case):
    results = tmp_path / "results"
    shutil.copytree(finished / "results", results)
    (results / "summary.md").unlink()
    edit, _ = CASES[case]
    path = results / BAD
    if edit is None:
        path.write_text('{"schema": 1, "run": ')  # a truncated copy
    else:
        record = json.loads(path.read_text())
        edit(record)
        path.write_text(json.dumps(record))
    return results


def _warned_once(stderr, results, case):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"leantrain: warning: skipping {results / BAD}: "), lines[0]
    assert CASES[case][1] in lines[0], lines[0]


@pytest.mark.parametrize("case", CASES)
def test_report_skips_a_malformed_record_with_one_warning(finished, tmp_path, case):
    results = _damaged(finished, tmp_path, case)
    result = cli("report", str(results))
    assert result.returncode == 0
    _warned_once(result.stderr, results, case)
    summary = (results / "summary.md").read_text()
    assert "| default | 1 × 1 | 1 |" in summary  # the good seed alone


@pytest.mark.parametrize("case", CASES)
def test_run_resume_leaves_a_malformed_record_alone_and_reports_the_rest(finished, tmp_path, case):
    results = _damaged(finished, tmp_path, case)
    before = (results / BAD).read_bytes()
    result = cli("run", str(finished / "tiny.toml"), "--resume", "--out", str(results), "--quiet")
    assert result.returncode == 0
    _warned_once(result.stderr, results, case)
    assert (results / BAD).read_bytes() == before  # a finished run is never trained over without --force
    assert (results / "summary.md").exists()


def test_report_with_csv_warns_once_too(finished, tmp_path):
    results = _damaged(finished, tmp_path, "val_acc null")
    result = cli("report", str(results), "--csv")
    assert result.returncode == 0 and (results / "epochs.csv").exists()
    _warned_once(result.stderr, results, "val_acc null")  # the records are read once for both outputs
