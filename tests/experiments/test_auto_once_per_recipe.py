"""An experiment decides each auto setting once per recipe and machine: every seed of a recipe trains the same
configuration, even when each probe would choose otherwise (issue 25, case g: seed 0 bf16, seed 1 fp32)."""
import importlib
import json

from leantrain.cli import main

resolve_module = importlib.import_module("leantrain.tuning.resolve")  # the module (leantrain.tuning.resolve is also a function)

EXPERIMENT = """
[experiment]
name = "auto-once"
seeds = [0, 1, 2]

[defaults]
data = "healthcare-sim:n=400"
model = "mlp:hidden=16"
epochs = 1
batch_size = 32

[[cases]]
label = "only"

[recipes.auto]
precision = "auto"
"""


def test_every_seed_of_a_recipe_takes_the_first_seeds_auto_choice(tmp_path, monkeypatch):
    probes = []

    def flipping(key, run_trials, measure, chooser):  # a busy machine: measured anew each time, never cached
        probes.append(key)
        return {"choice": "bf16" if len(probes) % 2 else "fp32", "trials": {}, "rejected": {}, "source": "measured"}

    monkeypatch.setattr(resolve_module, "_cached_or_measured", flipping)
    (tmp_path / "exp.toml").write_text(EXPERIMENT)
    assert main(["run", str(tmp_path / "exp.toml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.json"))]
    runs = sorted((r["run"]["config"]["seed"], r["run"]["autotune"]["precision"]) for r in records)
    assert [seed for seed, _ in runs] == [0, 1, 2]
    assert {entry["choice"] for _, entry in runs} == {"bf16"} and len(probes) == 1
    assert [entry["source"] for _, entry in runs] == ["measured", "experiment", "experiment"]
