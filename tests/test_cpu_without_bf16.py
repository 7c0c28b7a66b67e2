"""The suite's precision tests again, on a CPU without bf16 hardware: oneDNN capped at AVX2 emulates one.

CI machines change CPU from day to day (AMX Xeon, AVX-512-BF16 EPYC, AVX2-only EPYC); an op that has no
bf16 kernel on the oldest of them (oneDNN's LSTM) once failed only there. Capping the ISA here catches
the next such break on any machine.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
PRECISION_TESTS = ["tests/techniques/test_precision.py", "tests/models/test_zoo.py::test_model_trains_and_evaluates_under_bf16_autocast"]


@pytest.mark.timeout(300)
def test_precision_tests_pass_with_onednn_capped_at_avx2():
    env = {**os.environ, **AVX2_ONLY}
    env.pop("PYTEST_XDIST_WORKER", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings", *PRECISION_TESTS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_lstm_cannot_run_in_bf16_when_capped_at_avx2():
    """The probe's answer under the cap: proves the cap reaches oneDNN, so the test above tests the fallback."""
    code = ("import torch; from torch import nn; from leantrain.techniques.precision import runs_in_low_precision; "
            "print(torch.backends.cpu.get_cpu_capability(), runs_in_low_precision(nn.LSTM, 'cpu', torch.bfloat16))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **AVX2_ONLY}, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["AVX2", "False"], out.stderr[-2000:]
