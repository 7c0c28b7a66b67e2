"""Shared by the third-party tests: the command line in this process, records, generated image folders."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from leantrain.cli import main


def train(capsys, out: Path, *argv: str) -> tuple[int, str]:
    """``leantrain train ... --out out`` here; its exit status and stderr."""
    code = main(["train", "--device", "cpu", "--quiet", "--out", str(out), *argv])
    return code, capsys.readouterr().err.strip()


def record(out: Path) -> dict:
    (path,) = out.glob("*.json")
    return json.loads(path.read_text())


def refused(capsys, out: Path, *argv: str) -> str:
    """A run refused as the CLI refuses: exit 2, one line, nothing written."""
    code, err = train(capsys, out, *argv)
    assert code == 2, err
    assert err.startswith("leantrain: error:") and "\n" not in err and "Traceback" not in err, err
    assert not out.exists() or not any(out.iterdir())
    return err


def write_images(root: Path, counts: dict[str, int], size: int = 12, seed: int = 0) -> Path:
    """PNG files root/CLASS/i.png: each class a colour of its own plus noise, sizes differing (resizing is tested)."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for k, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            side = size + i % 3
            pixels = torch.rand(side, side, 3, generator=g) * 80
            pixels[..., k % 3] += 150
            Image.fromarray(pixels.clamp(0, 255).to(torch.uint8).numpy()).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def fast_compile(monkeypatch):
    """torch.compile through dynamo and AOTAutograd without inductor's C++ code generation (67 s for timm's
    test_resnet on this 2-core CPU, against about a second): the graph is traced all the same, which is what the
    record's ``compiled`` says."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))


def run_toml(tmp_path: Path, model: str, data: str) -> list[dict]:
    """An experiment file naming ``model`` and ``data``, run here; its records."""
    from leantrain.experiments.runner import load_experiment, run_experiment

    toml = tmp_path / "named.toml"
    toml.write_text(f"""
[experiment]
name = "named"
baseline = "plain"

[defaults]
epochs = 1
batch_size = 16
device = "cpu"
memory_check = false
model = "{model}"

[[cases]]
data = "{data}"

[recipes.plain]
""")
    run_experiment(load_experiment(toml), tmp_path / "results", quiet=True)
    return [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*.json")]
