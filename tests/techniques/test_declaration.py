"""A technique is declared once, in its own class: a toy one registered here appears in config parsing,
validation, the CLI's flags, ``leantrain list``, ``from_config`` and the composition table, and goes again."""
import json

import pytest

from leantrain.cli import main
from leantrain.config import RunConfig
from leantrain.errors import UsageError
from leantrain.options import Option
from leantrain.parallel.composition import check_parallel_mode, composition_table
from leantrain.techniques import Technique, from_config, register, unregister


def _every(n: int) -> int:
    if n < 0:
        raise ValueError(f"toy_every must be >= 0, got {n}")
    return n


class Toy(Technique):
    name = "toy"
    summary = "a test double: counts every n-th optimizer step"
    options = (Option("toy_every", int, 0, "count every n-th optimizer step; 0: off", check=_every),)
    runs_after = ("schedule",)
    parallel_modes = frozenset({"none", "ddp"})

    def __init__(self, every: int):
        self.every, self.counted = every, 0

    @classmethod
    def from_config(cls, config):
        return cls(config.toy_every) if config.toy_every else None

    def after_optimizer_step(self, state):
        self.counted += state.step % self.every == 0

    def on_epoch_end(self, state, record):
        record["toy_counted"] = self.counted


@pytest.fixture
def toy():
    register(Toy)
    yield Toy
    unregister("toy")


def test_a_registered_technique_is_a_config_key_with_its_default_and_checks(toy):
    assert RunConfig().toy_every == 0
    assert RunConfig.from_dict({"toy_every": 3}).to_dict()["toy_every"] == 3
    with pytest.raises(UsageError, match="toy_every must be >= 0, got -1"):
        RunConfig.from_dict({"toy_every": -1}, where="exp.toml")
    with pytest.raises(UsageError, match="toy_every = 'x' should be int"):
        RunConfig.from_dict({"toy_every": "x"})


def test_from_config_builds_it_after_what_it_runs_after(toy):
    config = RunConfig.from_dict({"toy_every": 2, "schedule": "warmup-cosine", "precision": "bf16"})
    assert [t.name for t in from_config(config)] == ["precision", "schedule", "toy"]


def test_cli_flag_list_and_training_pick_it_up(toy, capsys, tmp_path):
    assert main(["list"]) == 0
    assert "toy" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0
    assert "--toy-every" in capsys.readouterr().out
    code = main(["train", "--data", "healthcare-sim:n=300", "--epochs", "1", "--batch-size", "60", "--device", "cpu",
                 "--toy-every", "2", "--quiet", "--out", str(tmp_path)])
    assert code == 0
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["run"]["techniques"] == ["toy"]
    assert record["epochs"][0]["toy_counted"] == 2  # 4 steps of 60 out of 240 training samples: steps 2 and 4
    assert record["run"]["config"]["toy_every"] == 2


def test_composition_table_and_parallel_preflight_follow_the_declaration(toy):
    assert "| toy | `toy_every` | schedule | ✓ | ✓ | — |" in composition_table()
    check_parallel_mode([Toy(1)], "ddp")
    with pytest.raises(UsageError, match="--parallel fsdp does not compose with: toy"):
        check_parallel_mode([Toy(1)], "fsdp")


def test_unregistering_removes_it_everywhere():
    register(Toy)
    unregister("toy")
    with pytest.raises(UsageError, match="unknown key 'toy_every'"):
        RunConfig.from_dict({"toy_every": 1})
    assert "toy" not in composition_table()


def test_a_technique_whose_keys_clash_is_refused():
    class Clash(Technique):
        name = "clash"
        options = (Option("precision", str, "x", "taken"),)

    with pytest.raises(ValueError, match="precision"):
        register(Clash)


def test_readme_table_is_the_generated_one():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert composition_table() in readme, (
        "README.md's composition table is stale; paste the output of "
        "python -c 'from leantrain.parallel.composition import composition_table; print(composition_table())'"
    )


def test_a_technique_that_lists_no_parallel_modes_is_refused():
    """Modes are an allow-list: a technique that names none would silently accept every mode, new ones too."""
    class Silent(Technique):
        name = "silent"
        options = (Option("silent_every", int, 0, "unused"),)

    with pytest.raises(ValueError, match="must list the parallel modes"):
        register(Silent)


def test_a_mode_a_technique_does_not_list_is_refused_in_one_line():
    from leantrain.errors import UsageError
    from leantrain.parallel.composition import check_parallel_mode
    from leantrain.techniques import Compile

    with pytest.raises(UsageError, match="--parallel fsdp does not compose with: compile"):
        check_parallel_mode([Compile()], "fsdp")
