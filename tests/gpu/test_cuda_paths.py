"""The CUDA paths, where a GPU is: mixed precision against fp32, fp16 loss scaling, memory figures, NCCL, compile.

Skipped with their reason on a machine without CUDA (CI's). ``benchmarks/gpu_check.sh`` runs them first on a
machine with one GPU. Numbers against references, as the CPU tests do; no timings.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import leantrain as lt
from leantrain.data import from_tensors
from leantrain.techniques import MixedPrecision, Technique

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
ROOT = Path(__file__).resolve().parents[2]


def _data(n=4096, d=64, classes=10):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    return from_tensors(x, (x @ torch.randn(d, classes, generator=g)).argmax(1), seed=0)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def _fit(**options):
    return lt.fit(_model(), _data(), epochs=4, batch_size=128, lr=2e-3, device="cuda", **options)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda_ends_close_to_fp32(precision):
    ref, low = _fit(), _fit(techniques=[MixedPrecision(precision)])
    ref_loss, low_loss = ref["epochs"][-1]["val_loss"], low["epochs"][-1]["val_loss"]
    assert ref_loss < 1.0  # it learned (chance: ln 10 = 2.3)
    assert abs(low_loss - ref_loss) < 0.05 * ref_loss + 0.02


class InfAt(Technique):
    name = "inf-at"

    def __init__(self, step):
        self.step = step

    def after_micro_backward(self, state, micro_index):
        if state.step == self.step:
            next(state.model.parameters()).grad[0, 0] = float("inf")


def test_fp16_loss_scaling_skips_an_overflowing_step_and_backs_off_on_cuda():
    precision = MixedPrecision("fp16", init_scale=2.0**16)
    record = _fit(techniques=[precision, InfAt(5)])
    assert record["epochs"][0]["skipped_steps"] == 1
    assert record["epochs"][0]["loss_scale"] <= 2.0**15  # halved at the skipped step (and grown back at most later)


def test_peak_memory_is_the_devices_own_figure():
    torch.cuda.reset_peak_memory_stats()
    record = _fit()
    peak = record["epochs"][-1]["peak_mem_bytes"]
    params = sum(p.numel() for p in _model().parameters()) * 4
    assert params * 3 < peak <= torch.cuda.max_memory_allocated() + 1  # weights, grads, Adam's two moments at least


def test_one_rank_of_nccl_trains_like_one_process(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))},
           "PYTHONPATH": str(ROOT)}
    args = ["train", "--model", "mlp:hidden=64", "--data", "healthcare-sim:n=2000", "--epochs", "1", "--device", "cuda",
            "--quiet", "--seed", "3"]
    one = subprocess.run([sys.executable, "-m", "leantrain", *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    nccl = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                           "-m", "leantrain", *args, "--parallel", "ddp", "--backend", "nccl",
                           "--out", str(tmp_path / "nccl")], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0 and nccl.returncode == 0, (one.stderr[-2000:], nccl.stderr[-2000:])
    (a,), (b,) = [[json.loads(p.read_text()) for p in (tmp_path / d).glob("*.json")] for d in ("one", "nccl")]
    assert b["run"]["backend"] == "nccl"
    assert b["epochs"][0]["train_loss"] == pytest.approx(a["epochs"][0]["train_loss"], rel=1e-4)


def test_compile_on_cuda_traces_a_graph():
    from torch._dynamo.utils import counters

    counters.clear()
    record = _fit(compile=True)
    assert record["epochs"][0]["compiled"] is True, record["epochs"][0].get("compile_error")
    assert counters["stats"]["unique_graphs"] >= 1
