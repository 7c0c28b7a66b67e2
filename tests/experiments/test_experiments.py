import json
import shutil

import pytest

from leantrain.cli import main
from leantrain.experiments.results import load_run, load_runs
from leantrain.experiments.runner import load_experiment

EXPERIMENT = """
[experiment]
name = "tiny"
baseline = "slow"
seeds = [0, 1]
target = "baseline-final"

[defaults]
data = "healthcare-sim:n=600"
epochs = 2

[[cases]]
label = "small"
batch_size = 64

[[cases]]
model = "mlp:hidden=16"
batch_size = 32

[recipes.slow]
loader = "dataloader"
batch_size = 16

[recipes.fast]
precision = "bf16"
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exp")
    (folder / "tiny.toml").write_text(EXPERIMENT)
    assert main(["run", str(folder / "tiny.toml"), "--out", str(folder / "results"), "--quiet"]) == 0
    return folder


def test_the_matrix_is_cases_times_recipes_times_seeds_with_recipe_over_case():
    import tomllib

    from leantrain.experiments.runner import parse_experiment

    experiment = parse_experiment(tomllib.loads(EXPERIMENT), "tiny.toml")
    assert len(experiment.runs) == 2 * 2 * 2
    by_name = {r.config.run_name: r.config for r in experiment.runs}
    assert by_name["small-slow-s1"].batch_size == 16 and by_name["small-fast-s1"].batch_size == 64
    assert by_name["healthcare-sim-mlp-fast-s0"].model == "mlp:hidden=16"


def test_run_writes_one_record_per_run_a_summary_and_plots(finished):
    results = finished / "results"
    assert len(list(results.glob("*.json"))) == 8
    assert {p.name for p in results.glob("*.png")} == {"small.png", "healthcare-sim-mlp.png", "speedup.png"}
    summary = (results / "summary.md").read_text()
    assert "## small" in summary and "speedup to target" in summary and "Δ vs baseline" in summary


def test_json_records_round_trip_and_follow_the_schema(finished, tmp_path):
    path = finished / "results" / "small-fast-s0.json"
    record = load_run(path)
    copy = tmp_path / "copy.json"
    copy.write_text(json.dumps(record))
    assert load_run(copy) == record
    assert record["run"]["recipe"] == "fast" and record["run"]["techniques"] == ["bf16"]
    assert {"torch", "python", "device", "threads", "hostname", "git_commit"} <= record["env"].keys()
    epoch = record["epochs"][0]
    for key in ("train_loss", "val_loss", "val_acc", "time_s", "train_steps_per_s", "val_steps_per_s",
                "samples_per_s", "peak_mem_bytes"):
        assert key in epoch


def test_report_rebuilds_identical_tables_from_the_json_alone(finished, tmp_path):
    original = (finished / "results" / "summary.md").read_text()
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in (finished / "results").glob("*.json"):
        shutil.copy(path, copy)
    assert main(["report", str(copy)]) == 0
    assert (copy / "summary.md").read_text() == original
    assert {p.name for p in copy.glob("*.png")} == {p.name for p in (finished / "results").glob("*.png")}


def test_speedups_are_paired_by_seed_against_the_baseline(finished):
    from leantrain.experiments.report import group_cases

    (case,) = [c for c in group_cases(load_runs(finished / "results")) if c.label == "small"]
    assert case.baseline == "slow" and len(case.recipes["fast"]) == 2
    finals = sorted(r["summary"]["final_val_acc"] for r in case.recipes["slow"])
    assert case.target == pytest.approx(sum(finals) / 2 - 0.005)  # median of two = their mean


def test_resume_skips_finished_runs(finished, capsys):
    results = finished / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}
    (results / "small-fast-s1.json").unlink()
    assert main(["run", str(finished / "tiny.toml"), "--out", str(results), "--resume"]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}
    assert after.keys() == before.keys()
    assert [n for n in after if after[n] != before.get(n)] == ["small-fast-s1.json"]


def test_the_shipped_experiment_files_parse():
    from pathlib import Path

    for path in sorted(Path(__file__).parents[2].glob("experiments/*.toml")):
        assert load_experiment(path).runs, path


def test_a_recipe_can_be_limited_to_some_cases_and_unknown_case_names_are_errors():
    import tomllib

    from leantrain.errors import UsageError
    from leantrain.experiments.runner import parse_experiment

    raw = tomllib.loads(EXPERIMENT.replace('[recipes.fast]', '[recipes.fast]\ncases = ["small"]'))
    experiment = parse_experiment(raw, "tiny.toml")
    assert sorted({(r.case, r.recipe) for r in experiment.runs}) == [
        ("healthcare-sim-mlp", "slow"), ("small", "fast"), ("small", "slow")]
    raw = tomllib.loads(EXPERIMENT.replace('[recipes.fast]', '[recipes.fast]\ncases = ["smal"]'))
    with pytest.raises(UsageError, match="unknown case\\(s\\) smal"):
        parse_experiment(raw, "tiny.toml")


def test_report_csv_is_one_tidy_row_per_run_and_epoch(finished, tmp_path):
    import csv

    results = finished / "results"
    assert main(["report", str(results), "--csv", str(tmp_path / "t.csv")]) == 0
    with (tmp_path / "t.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    records = load_runs(results)
    assert len(rows) == sum(len(r["epochs"]) for r in records) == 8 * 2
    by_key = {(row["run"], int(row["epoch"])): row for row in rows}
    for record in records:
        for epoch in record["epochs"]:
            row = by_key[(record["run"]["name"], epoch["epoch"])]
            assert float(row["val_acc"]) == epoch["val_acc"] and float(row["train_acc"]) == epoch["train_acc"]
            assert row["recipe"] == record["run"]["recipe"] and int(row["seed"]) == record["run"]["seed"]
            assert row["cpu_capability"] == record["env"]["cpu_capability"]
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_csv(tmp_path / "t.csv")
    assert frame.shape[0] == 16 and frame.groupby(["case", "recipe", "epoch"]).val_acc.median().shape[0] == 8


def test_every_speedup_row_names_the_quality_delta_both_ways_with_its_direction(finished):
    summary = (finished / "results" / "summary.md").read_text()
    fast_rows = [line for line in summary.splitlines() if line.startswith("| fast | 1 × ")]  # the speedup tables
    assert len(fast_rows) == 2
    for row in fast_rows:
        delta = row.split(" | ")[5]  # the "Δ vs baseline" column
        assert "%" in delta and any(word in delta for word in ("better", "worse", "same")) and "±0.5%" in delta
    assert "train acc" in summary
