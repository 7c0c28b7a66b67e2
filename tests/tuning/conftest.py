import pytest

from leantrain.tuning import cache, probe


@pytest.fixture(autouse=True)
def _short_probes_and_own_cache(monkeypatch, tmp_path):
    """Real probes here time 2 short rounds (they check behaviour, never a speed); each test has its own
    autotune cache file (the session's peak FLOP/s cache stays shared: measuring it is slow)."""
    monkeypatch.setattr(probe, "ROUNDS", 2)
    monkeypatch.setattr(probe, "ROUND_S", 0.002)
    monkeypatch.setattr(cache, "_path", lambda: tmp_path / "autotune-cache" / cache.FILE)
