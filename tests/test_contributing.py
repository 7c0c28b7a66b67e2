"""CONTRIBUTING.md's walkthroughs, run: each code block is imported as the file it names (as the package's
discovery would import it), and the technique or model it adds appears in config validation, the CLI's
flags, ``leantrain list`` and training, without any other file edited."""
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from leantrain.cli import main
from leantrain.config import RunConfig
from leantrain.errors import UsageError
from leantrain.models.registry import MODELS
from leantrain.techniques import from_config, unregister
from leantrain.techniques.registry import composition_table

ROOT = Path(__file__).parents[1]
BLOCKS = dict(re.findall(r"```python file=(\S+)\n(.*?)```", (ROOT / "CONTRIBUTING.md").read_text(), re.S))


def _import_block(path: str, tmp_path: Path):
    """Import the block as module ``leantrain.<...>`` from a temporary file (the real folder stays untouched)."""
    name = path.removesuffix(".py").replace("/", ".")
    file = tmp_path / Path(path).name
    file.write_text(BLOCKS[path])
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def early_stopping(tmp_path):
    module = _import_block("leantrain/techniques/early_stopping.py", tmp_path)
    yield module
    unregister("early_stop")
    del sys.modules[module.__name__]


@pytest.fixture
def logreg(tmp_path):
    module = _import_block("leantrain/models/logreg.py", tmp_path)
    yield module
    MODELS.unregister("logreg")
    del sys.modules[module.__name__]


def test_the_walkthroughs_name_files_in_the_right_folders():
    assert set(BLOCKS) == {"leantrain/techniques/early_stopping.py", "leantrain/models/logreg.py"}
    assert not any((ROOT / path).exists() for path in BLOCKS)  # examples, not shipped code


def test_a_technique_in_one_file_appears_everywhere(early_stopping, capsys, tmp_path):
    config = RunConfig.from_dict({"early_stop": 1, "complexity": "match"})
    assert [t.name for t in from_config(config)] == ["complexity", "early_stop"]
    with pytest.raises(UsageError, match="early_stop must be >= 0"):
        RunConfig.from_dict({"early_stop": -1})
    assert "| early_stop | `early_stop` | complexity |" in composition_table()
    assert main(["list"]) == 0 and "early_stop" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0 and "--early-stop" in capsys.readouterr().out
    # lr 0: validation loss never improves, so patience 1 stops after the second epoch of five.
    code = main(["train", "--data", "healthcare-sim:n=300", "--epochs", "5", "--lr", "1e-12", "--early-stop", "1",
                 "--device", "cpu", "--quiet", "--out", str(tmp_path / "out")])
    assert code == 0
    record = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert record["run"]["techniques"] == ["early_stop"] and len(record["epochs"]) == 2


def test_a_model_in_one_file_appears_everywhere(logreg, capsys, tmp_path):
    assert main(["list"]) == 0 and "logreg" in capsys.readouterr().out
    assert RunConfig.from_dict({"model": "logreg:bias=false"}).model == "logreg:bias=false"
    with pytest.raises(UsageError, match="model 'logreg' has no option 'depth'"):
        RunConfig.from_dict({"model": "logreg:depth=2"})
    code = main(["train", "--model", "logreg", "--data", "healthcare-sim:n=300", "--epochs", "1", "--device", "cpu",
                 "--quiet", "--out", str(tmp_path)])
    assert code == 0
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["run"]["model"] == "logreg" and record["run"]["flops_per_sample"] == 2.0 * 128 * 5
    assert record["epochs"][0]["train_loss"] > 0
