"""A tiny deterministic run's per-step losses, checked against a file: any change to numerics shows here.

If a change to numerics is deliberate (a new initialisation, a different loss reduction), regenerate and
commit the file with the change, saying why in the commit message:

    LEANTRAIN_REGENERATE_GOLDEN=1 python -m pytest tests/golden -p no:randomly

On the machine class (torch version, CPU capability and CPU model) that wrote the file the losses must be equal bit
for bit; elsewhere kernels may round differently, so they must agree to a relative 1e-5, far tighter
than any real change to the training arithmetic moves them.
"""
import json
import math
import os
from pathlib import Path

import pytest
import torch

import leantrain as lt
from leantrain.machine import cpu_name
from tests.faults.helpers import LossTap, tiny_data, tiny_model

GOLDEN = Path(__file__).parent / "tiny_mlp_step_losses.json"
OPTIONS = {"epochs": 2, "batch_size": 32, "lr": 1e-2, "device": "cpu", "seed": 0, "threads": 1}

pytestmark = pytest.mark.timeout(60)


def _machine() -> dict:
    # The CPU model too: an AMD EPYC and an Intel Xeon both report AVX512 and still round a step differently.
    return {"torch": torch.__version__.split("+")[0], "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu": cpu_name()}


def _run() -> list[float]:
    tap = LossTap()
    lt.fit(tiny_model(), tiny_data(), techniques=[tap], **OPTIONS)
    return tap.losses


def test_per_step_losses_match_the_golden_file():
    losses = _run()
    if os.environ.get("LEANTRAIN_REGENERATE_GOLDEN"):
        GOLDEN.write_text(json.dumps({"options": OPTIONS, "machine": _machine(), "step_losses": losses}, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert golden["options"] == OPTIONS and len(losses) == len(golden["step_losses"]) == 20
    if golden["machine"] == _machine():
        assert losses == golden["step_losses"]
    else:
        assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(losses, golden["step_losses"]))
