import pytest


@pytest.fixture(autouse=True)
def _no_peak_flops_measurement(monkeypatch):
    """Utilisation is not under test here; measuring the fp16 matmul peak on a CPU takes ~45 s single-threaded."""
    monkeypatch.setattr("leantrain.train.record.peak_matmul_flops", lambda device, dtype: 1e11)
