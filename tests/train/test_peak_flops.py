"""The measured matmul peak: a disturbed measurement is kept for the process (best seen), re-measured at most once a minute."""
import torch

from leantrain.train import metrics


class Busy:
    def cores(self):
        return 1.0


def test_a_disturbed_peak_is_not_remeasured_every_run_and_keeps_the_best(monkeypatch, tmp_path):
    monkeypatch.setenv("LEANTRAIN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(metrics, "ForeignCpuMeter", Busy)
    figures = iter([5e9, 4e9, 3e9, 9e9, 1e9, 1e9])  # then 1e9 for ever
    monkeypatch.setattr(metrics, "_measure_matmul", lambda device, dtype: next(figures, 1e9))
    cpu = torch.device("cpu")
    assert metrics._cached_peak(cpu, torch.float32) == 5e9  # best of 3 disturbed tries
    assert metrics._cached_peak(cpu, torch.float32) == 5e9  # within the minute: not measured again
    monkeypatch.setattr(metrics, "REMEASURE_S", 0.0)
    assert metrics._cached_peak(cpu, torch.float32) == 9e9  # later: measured again, the best kept
    assert not (tmp_path / "peak_flops.json").exists()  # disturbed figures never reach the disk cache
    assert set(metrics.matmul_peaks(cpu)) == {"fp32", "bf16", "fp16"}
