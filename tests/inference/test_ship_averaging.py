"""benchmarks/seed004_ship.py averages several checkpoints of one run into one model file, and refuses another run's."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import leantrain as lt
from leantrain import models
from leantrain.inference.model_file import load_model
from leantrain.train import checkpoint

ROOT = Path(__file__).resolve().parents[2]
DATA = "polynomial:n=64,val_fraction=0.5"
MODEL = "seq2seq-transformer:d_model=16,heads=2,encoder_layers=1,decoder_layers=1,ff=32"


def _checkpoint(path: Path, model_spec: str, seed: int, samples: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    weights = models.build(model_spec, lt.data.load(DATA)).state_dict()
    payload = {key: None for key in checkpoint.KEYS}
    payload.update(config={"model": model_spec, "data": DATA}, epoch=0, step=samples // 8, samples_seen=samples,
                   records=[], progress={"elapsed_s": samples / 100}, model=weights)
    checkpoint.save(path, payload)
    return weights


def _ship(*sources: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seed004_ship.py"), *map(str, sources),
                           "--check", "0", "--out", str(out)], capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(180)
def test_checkpoints_of_one_run_are_averaged_weight_by_weight(tmp_path: Path) -> None:
    first = _checkpoint(tmp_path / "a.ckpt", MODEL, seed=1, samples=800)
    second = _checkpoint(tmp_path / "b.ckpt", MODEL, seed=2, samples=1600)
    done = _ship(tmp_path / "b.ckpt", tmp_path / "a.ckpt", out=tmp_path / "avg.model.pt")
    assert done.returncode == 0, done.stderr
    shipped = load_model(tmp_path / "avg.model.pt")
    for name, tensor in shipped.model.state_dict().items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, (first[name] + second[name]) / 2, msg=name)
    made = json.loads(shipped.record)
    assert made["samples_seen"] == 1600  # the newest one's progress, whatever the order given
    assert [(each["checkpoint"], each["samples_seen"]) for each in made["averaged"]] == [("a.ckpt", 800), ("b.ckpt", 1600)]


@pytest.mark.timeout(180)
def test_another_runs_checkpoint_is_refused_in_one_line(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "a.ckpt", MODEL, seed=1, samples=800)
    _checkpoint(tmp_path / "other.ckpt", MODEL.replace("ff=32", "ff=64"), seed=1, samples=1600)
    done = _ship(tmp_path / "a.ckpt", tmp_path / "other.ckpt", out=tmp_path / "avg.model.pt")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("a.ckpt: another run than other.ckpt")
    assert not (tmp_path / "avg.model.pt").exists()
