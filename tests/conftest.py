import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Each test: deterministic single-thread-per-worker torch, and a private cache (peak FLOP/s) dir."""
    monkeypatch.setenv("LEANTRAIN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.set_num_threads(1)
    yield


def pytest_configure(config):
    os.environ.setdefault("MPLBACKEND", "Agg")
