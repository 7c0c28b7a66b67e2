"""CONTRIBUTING.md's walkthroughs, run: each code block is imported as the file it names (as the package's
discovery would import it), and the technique or model it adds appears in config validation, the CLI's
flags, ``leantrain list`` and training, without any other file edited."""
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from leantrain.cli import main
from leantrain.config import RunConfig
from leantrain.errors import UsageError
from leantrain.models.registry import MODELS
from leantrain.parallel.composition import composition_table
from leantrain.parallel.strategy import mode_names, unregister_mode
from leantrain.techniques import from_config, unregister

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


@pytest.fixture
def allreduce_mode(tmp_path):
    mode_names()  # the built-in modes first, as the package's discovery imports them
    module = _import_block("leantrain/parallel/modes/allreduce.py", tmp_path)
    yield module
    unregister_mode("allreduce")
    del sys.modules[module.__name__]


def test_the_walkthroughs_name_files_in_the_right_folders():
    assert set(BLOCKS) == {"leantrain/techniques/early_stopping.py", "leantrain/models/logreg.py",
                           "leantrain/parallel/modes/allreduce.py"}
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


@pytest.mark.timeout(120)
def test_a_parallel_mode_in_one_file_trains_like_one_process(allreduce_mode, capsys, tmp_path):
    from tests.parallel.helpers import run_single, run_workers

    assert "allreduce" in mode_names()
    assert RunConfig.from_dict({"parallel": "allreduce", "procs": 2}).parallel == "allreduce"
    assert main(["list"]) == 0 and "data parallel: gradients averaged in one flat all-reduce" in capsys.readouterr().out
    with pytest.raises(UsageError, match="--parallel allreduce does not compose with: precision"):
        RunConfig.from_dict({"parallel": "allreduce", "precision": "bf16"})
    base = {"model": "mlp:hidden=32", "data": "healthcare-sim:n=512", "epochs": 2, "seed": 3, "device": "cpu",
            "threads": 1, "loader": "tensor"}
    one = run_single({**base, "batch_size": 64})
    two = run_workers(2, tmp_path, {**base, "batch_size": 32, "parallel": "allreduce"})
    assert two[0]["record"]["run"]["world_size"] == 2 and len(two[0]["steps"]) == len(one["steps"])
    for rank in two:  # each step's parameters, on every rank, as one process at the global batch
        for got, want in zip(rank["steps"], one["steps"]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
