"""The recipe to keep (issue 26, item 4): every form written is run here. The experiment file parses to the two
recipes; the printed `leantrain train` command trains; the `lt.fit` call trains; and the plain PyTorch script
prints the per-epoch training losses `leantrain train` records for the same settings."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from leantrain.advice.equivalents import leantrain_only
from leantrain.advice.recipe import train_argv, write_recipe
from leantrain.cli import main
from leantrain.config import RunConfig, config_options
from leantrain.experiments.runner import load_experiment
from leantrain.techniques import checkpointing

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DATA = "healthcare-sim:n=2000"
BASELINE = {"model": "mlp", "data": DATA, "epochs": 2, "threads": 1, "loader": "dataloader"}
RECOMMENDED = {**BASELINE, "loader": "tensor", "precision": "bf16", "optimizer": "fused-adam", "batch_size": 256,
               "lr": 0.002, "schedule": "warmup-cosine", "threads": 2}


def _config(**values):
    return RunConfig.from_dict(values).to_dict()


def _train(config: dict, out: Path) -> dict:
    """`leantrain train` with the flags the recipe prints, in this process; its record."""
    argv = train_argv(config)
    assert argv[:2] == ["leantrain", "train"]
    assert main([*argv[1:], "--out", str(out), "--quiet"]) == 0
    (record,) = [json.loads(p.read_text()) for p in out.glob("*.json")]
    return record


def _plain(script: Path) -> list[tuple[float, float]]:
    """Run a plain script; its (train_loss, val_loss) per epoch."""
    done = subprocess.run([sys.executable, script.name], cwd=script.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.split() for line in done.stdout.splitlines() if line.startswith("epoch ")]
    return [(float(words[3]), float(words[5])) for words in lines]


def _losses(record: dict) -> list[tuple[float, float]]:
    return [(epoch["train_loss"], epoch["val_loss"]) for epoch in record["epochs"]]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("which", ["recommended", "baseline"])
def test_the_plain_script_gets_the_losses_leantrain_train_records(tmp_path, which):
    """The key test: the same per-epoch training (and validation) losses, from a loop with no leantrain in it."""
    baseline, recommended = _config(**BASELINE), _config(**RECOMMENDED)
    write_recipe(tmp_path / "advice", baseline, recommended)
    config = recommended if which == "recommended" else baseline
    script = tmp_path / "advice" / ("train_plain.py" if which == "recommended" else "train_baseline_plain.py")
    assert "leantrain.train" not in script.read_text() and "lt.fit" not in script.read_text()
    plain, trained = _plain(script), _losses(_train(config, tmp_path / "out"))
    assert len(plain) == len(trained) == 2
    for (plain_train, plain_val), (train, val) in zip(plain, trained):
        assert plain_train == pytest.approx(train, rel=1e-6, abs=0)
        assert plain_val == pytest.approx(val, rel=1e-6, abs=0)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("model,data", [("gpt2-tiny", "wikitext-sim:n_tokens=8000"),
                                        ("seq2seq:emb=16,hidden=32", "polynomial:n=600")], ids=["lm", "seq2seq"])
def test_the_plain_loss_is_the_task_s_own(tmp_path, model, data):
    """Per token: next-token cross-entropy, and seq2seq's teacher forcing with its pads left out."""
    config = _config(model=model, data=data, epochs=1, batch_size=32, threads=1, precision="bf16")
    write_recipe(tmp_path, config, config)
    plain, trained = _plain(tmp_path / "train_plain.py"), _losses(_train(config, tmp_path / "out"))
    assert [loss for epoch in plain for loss in epoch] == pytest.approx([loss for e in trained for loss in e], rel=1e-6)


@pytest.mark.timeout(300)
def test_more_settings_carried_over_alike(tmp_path):
    """fp16 with its loss scaler, gradient clipping, AdamW's weight decay, label smoothing, the foreach kernel."""
    baseline = _config(**BASELINE)
    recommended = _config(**BASELINE, precision="fp16", optimizer="adamw", weight_decay=0.01, grad_clip=0.5,
                          label_smoothing=0.1, batch_size=128, device="cpu")
    write_recipe(tmp_path, baseline, recommended)
    text = (tmp_path / "train_plain.py").read_text()
    assert "GradScaler" in text and "clip_grad_norm_" in text and "AdamW" in text and "label_smoothing=0.1" in text
    plain, trained = _plain(tmp_path / "train_plain.py"), _losses(_train(recommended, tmp_path / "out"))
    assert [p[0] for p in plain] == pytest.approx([t[0] for t in trained], rel=1e-5)


@pytest.mark.timeout(300)
def test_a_run_from_a_saved_model_starts_the_script_from_its_weights(tmp_path):
    source = _config(**{**BASELINE, "epochs": 1, "save_model": True})
    _train(source, tmp_path / "source")
    config = _config(**{**BASELINE, "init_from": str(tmp_path / "source")})  # the run folder holding the file
    write_recipe(tmp_path / "advice", config, config)
    assert "init_from" not in "".join(line for line in (tmp_path / "advice" / "train_plain.py").read_text().splitlines()
                                      if line.startswith("#   "))  # carried out, not left to leantrain
    plain, trained = _plain(tmp_path / "advice" / "train_plain.py"), _losses(_train(config, tmp_path / "out"))
    assert [loss for epoch in plain for loss in epoch] == pytest.approx([loss for e in trained for loss in e], rel=1e-6)
    fresh = _losses(_train(_config(**BASELINE), tmp_path / "fresh"))
    assert fresh[0][0] != pytest.approx(trained[0][0], rel=1e-3)  # the saved weights made a difference


@pytest.mark.timeout(300)
def test_checkpointing_wraps_the_modules_leantrain_wraps_and_keeps_its_losses(tmp_path):
    model = "mlp:depth=4,hidden=32"
    baseline = _config(**{**BASELINE, "model": model})
    recommended = _config(**{**BASELINE, "model": model, "checkpointing": "sqrt", "loader": "tensor"})
    record = _train(recommended, tmp_path / "out")
    wrapped = record["epochs"][0].get("checkpointed_modules")  # the record's list, where leantrain records it
    write_recipe(tmp_path / "named", baseline, recommended, checkpointed=wrapped)
    write_recipe(tmp_path / "rule", baseline, recommended)
    assert "apply_activation_checkpointing(" in (tmp_path / "rule" / "train_plain.py").read_text()
    for folder in ("named", "rule"):
        plain = _plain(tmp_path / folder / "train_plain.py")
        assert [p[0] for p in plain] == pytest.approx([e["train_loss"] for e in record["epochs"]], rel=1e-6)


@pytest.mark.timeout(300)
def test_a_compiled_checkpointed_script_runs(tmp_path):
    """torch.compile of a checkpoint-wrapped model: the script runs; compile's fused kernels round differently, so
    its loss is leantrain's (eager) within a looser band."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile on the CPU needs a C compiler")
    model = "mlp:depth=4,hidden=32"
    baseline = _config(**{**BASELINE, "model": model, "epochs": 1})
    recommended = _config(**{**BASELINE, "model": model, "epochs": 1, "compile": True, "checkpointing": "sqrt"})
    write_recipe(tmp_path, baseline, recommended)
    text = (tmp_path / "train_plain.py").read_text()
    assert "torch.compile(model)" in text and "apply_activation_checkpointing(" in text
    plain = _plain(tmp_path / "train_plain.py")
    eager = _losses(_train({**recommended, "compile": False}, tmp_path / "out"))
    assert len(plain) == 1 and plain[0][0] == pytest.approx(eager[0][0], rel=1e-3)


@pytest.mark.timeout(300)
def test_selective_checkpointing_keeps_the_products_and_the_losses(tmp_path):
    if "selective" not in getattr(checkpointing, "SETTINGS", ()):
        pytest.skip("this leantrain has no selective checkpointing")
    model = "mlp:depth=4,hidden=32"
    recommended = _config(**{**BASELINE, "model": model, "epochs": 1, "checkpointing": "selective"})
    write_recipe(tmp_path, _config(**{**BASELINE, "model": model, "epochs": 1}), recommended)
    assert "create_selective_checkpoint_contexts" in (tmp_path / "train_plain.py").read_text()
    plain, trained = _plain(tmp_path / "train_plain.py"), _losses(_train(recommended, tmp_path / "out"))
    assert [p[0] for p in plain] == pytest.approx([t[0] for t in trained], rel=1e-6)


def test_the_experiment_file_reruns_the_two_recipes(tmp_path):
    baseline, recommended = _config(**BASELINE), _config(**RECOMMENDED)
    recipe = write_recipe(tmp_path, baseline, recommended, name="my-advice")
    experiment = load_experiment(tmp_path / "recipe.toml")
    assert experiment.name == "my-advice" and experiment.baseline == "baseline" and experiment.seeds == [0, 1]
    assert experiment.target == "baseline-final" and experiment.target_tolerance == 0.005
    for run in experiment.runs:
        expected = baseline if run.recipe == "baseline" else recommended
        assert run.config.to_dict() == {**expected, "seed": run.seed, "name": run.config.name}
    assert {run.recipe for run in experiment.runs} == {"baseline", "recommended"}
    assert [p.name for p in recipe.files] == ["recipe.toml", "train_plain.py", "train_baseline_plain.py",
                                              "recipe.patch"]
    raw = tomllib.loads((tmp_path / "recipe.toml").read_text())
    assert raw["defaults"] == {"data": DATA, "epochs": 2}  # what both share, and only what is not a default
    # Both sides of a change are written, the default one too, so each table reads as the whole change.
    assert raw["recipes"]["recommended"]["precision"] == "bf16" and raw["recipes"]["baseline"]["precision"] == "fp32"


def test_keep_your_recipe_writes_the_baseline_alone(tmp_path):
    baseline = _config(**BASELINE)
    recipe = write_recipe(tmp_path, baseline, dict(baseline))
    assert [p.name for p in recipe.files] == ["recipe.toml", "train_plain.py"]
    assert "Keep your recipe" in recipe.markdown and "```diff" not in recipe.markdown
    experiment = load_experiment(tmp_path / "recipe.toml")
    assert {run.recipe for run in experiment.runs} == {"baseline"}
    assert experiment.runs[0].config.to_dict() == {**baseline, "seed": 0, "name": experiment.runs[0].config.name}


def test_the_patch_turns_the_baseline_script_into_the_recommended_one(tmp_path):
    if shutil.which("patch") is None:
        pytest.skip("no patch program here")
    write_recipe(tmp_path, _config(**BASELINE), _config(**RECOMMENDED))
    patched = tmp_path / "patched.py"
    subprocess.run(["patch", "-s", "-o", str(patched), str(tmp_path / "train_baseline_plain.py"),
                    str(tmp_path / "recipe.patch")], check=True)
    assert patched.read_text() == (tmp_path / "train_plain.py").read_text()
    patch = (tmp_path / "recipe.patch").read_text()
    assert "+optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=True)" in patch
    assert "+autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16)" in patch
    assert "+scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)" in patch


def test_the_markdown_shows_every_form(tmp_path):
    recipe = write_recipe(tmp_path, _config(**BASELINE), _config(**RECOMMENDED))
    text = recipe.markdown
    assert text.startswith("## The recipe to keep")
    for shown in ("```toml", "leantrain train --model mlp", "--precision bf16", "--optimizer fused-adam", "lt.fit(",
                  'precision="bf16"', "```diff", 'precision="bf16-mixed"', 'mixed_precision="bf16"',
                  "`precision` fp32 → bf16", "`batch_size` 64 → 256"):
        assert shown in text, shown


def test_the_fit_call_trains_as_the_command_does(tmp_path):
    recommended = _config(**{**RECOMMENDED, "threads": 1})
    recipe = write_recipe(tmp_path, _config(**BASELINE), recommended)
    code = recipe.markdown.split("```python\nimport torch")[1].split("```")[0]
    scope: dict = {}
    exec("import torch" + code.replace("print(", "str("), scope)  # noqa: S102  (the snippet the advice prints)
    trained = _losses(_train(recommended, tmp_path / "out"))
    assert [e["train_loss"] for e in scope["result"].epochs] == pytest.approx([t[0] for t in trained], rel=1e-6)


def test_settings_only_leantrain_has_are_named_never_dropped(tmp_path):
    recommended = _config(**BASELINE, accumulation="adaptive", accum_max=8, on_nonfinite="skip", save_model=True,
                          complexity="match")
    recipe = write_recipe(tmp_path, _config(**BASELINE), recommended)
    kept = dict(leantrain_only(recommended))
    assert {"accumulation = adaptive, accum_max = 8", "on_nonfinite = skip", "save_model = true",
            "complexity = match"} <= set(kept)
    script = (tmp_path / "train_plain.py").read_text()
    section = recipe.markdown.split("### Keep leantrain for these")[1]
    for setting in kept:
        assert f"#   {setting}:" in script and f"`{setting}`" in section
    assert "adaptive one is leantrain's" in recipe.markdown  # neither Lightning nor Accelerate has it
    # Inert settings (their switch is off) are not listed: they change nothing.
    assert leantrain_only(_config(**BASELINE, accum_max=8, lr_batch=128)) == []


def test_every_setting_that_takes_none_has_it_as_its_default():
    """The TOML file leaves a None out (TOML has no null): that is right only while None is always the default."""
    for option in config_options():
        if type(None) in getattr(option.type, "__args__", ()):
            assert option.default is None, option.name
