"""The command a user types, on a CPU without bf16 hardware: ``leantrain train --precision bf16`` for every zoo model.

oneDNN capped at AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``, ``ATEN_CPU_CAPABILITY=avx2``) behaves as an AVX2-only EPYC:
no bf16 LSTM primitive. A bf16 run of an LSTM model once crashed there in the memory estimate, which ran the
model before the precision technique kept the LSTM in fp32; the precision tests alone stayed green. So each
model trains here through the CLI, memory check on, tiny data, one epoch, each in its own process.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from leantrain.models.registry import MODELS

AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
# Each zoo model at a small size, on a registered data set of its kind, a few dozen samples.
CASES = {
    "mlp": ("mlp:hidden=32", "healthcare-sim:n=200"),
    "cnn": ("cnn:width=4,hidden=32", "cifar10-sim:n=96,classes=2"),
    "vgg11": ("vgg11:width=4,hidden=32", "cifar10-sim:n=96,classes=2"),
    "resnet18": ("resnet18:width=4", "cifar10-sim:n=96,classes=2"),
    "resnet50": ("resnet50:width=4", "cifar10-sim:n=96,classes=2"),
    "nbow": ("nbow:dim=16", "imdb-sim:n=64"),
    "conv-autoencoder": ("conv-autoencoder:width=4", "mnist-sim:n=64,task=reconstruction"),
    "gpt2": ("gpt2:n_layer=1,n_head=2,n_embd=32", "wikitext-sim:n_tokens=4000,seq_len=32"),
    "gpt2-tiny": ("gpt2-tiny", "wikitext-sim:n_tokens=4000,seq_len=32"),
    "seq2seq": ("seq2seq:emb=8,hidden=16", "polynomial:n=64"),
    "seq2seq-transformer": ("seq2seq-transformer:d_model=16,heads=2,ff=32,encoder_layers=1,decoder_layers=1",
                            "polynomial:n=64"),
}
RECURRENT = {"seq2seq"}  # models with an LSTM, which oneDNN cannot run in bf16 under the cap


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One cache for every case: the machine's measured peaks (keyed by the capped ISA) are taken once."""
    return tmp_path_factory.mktemp("cache")


def test_every_zoo_model_has_a_case():
    assert sorted(CASES) == sorted(MODELS.names())


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", sorted(CASES))
def test_bf16_trains_from_the_cli_on_a_cpu_capped_at_avx2(name, tmp_path, cache_dir):
    model, data = CASES[name]
    env = {**os.environ, **AVX2_ONLY, "LEANTRAIN_CACHE_DIR": str(cache_dir)}
    command = [sys.executable, "-m", "leantrain", "train", "--model", model, "--data", data, "--precision", "bf16",
               "--epochs", "1", "--batch-size", "16", "--memory-check", "true", "--quiet", "--out", str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=220)
    assert result.returncode == 0, result.stderr[-3000:]
    (record_path,) = Path(tmp_path).glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["run"]["config"]["precision"] == "bf16"
    kept = record["epochs"][0].get("kept_fp32", [])
    assert bool(kept) == (name in RECURRENT), kept
