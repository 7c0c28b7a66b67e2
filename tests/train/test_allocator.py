"""Freed memory stays in the process for the next step (glibc): a freed 16 MB block is kept in malloc's free
lists, where the C library's defaults hand it back to the kernel (and the next step faults it in again)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import ctypes, json, torch
from leantrain.train.allocator import keep_freed_memory
setting = keep_freed_memory()

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
block = torch.empty(4 << 20)  # 16 MB: above glibc's initial mmap threshold
block.fill_(1.0)
del block
print(json.dumps({"setting": setting, "free_in_process": mallinfo2().fordblks}))
"""


def _probe(**env: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and mallinfo2")
def test_a_freed_block_is_kept_for_the_next_step():
    kept = _probe()
    if not kept["setting"].startswith("glibc"):
        pytest.skip(f"not glibc here: {kept['setting']}")
    system = _probe(LEANTRAIN_MALLOC="system")
    assert system["setting"].startswith("system defaults")
    assert kept["free_in_process"] >= 16 << 20
    assert system["free_in_process"] < 16 << 20  # unmapped on free: the next allocation faults every page in again


def test_the_run_record_says_what_the_allocator_does():
    from leantrain.config import RunConfig
    from leantrain.train.run import execute

    record = execute(RunConfig.from_dict({"model": "mlp:hidden=8", "data": "healthcare-sim:n=128", "epochs": 1,
                                          "device": "cpu"}), quiet=True)
    assert record["env"]["allocator"].startswith(("glibc: freed memory kept", "system defaults"))
