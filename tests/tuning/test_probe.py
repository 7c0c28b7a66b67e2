"""The real probe on a tiny model: it measures every candidate and leaves the run's model and RNG untouched."""
import math
import time

import torch
from torch import nn

from leantrain.machine import busy_cores, cpu_flags, free_threads
from leantrain.tasks import get_task
from leantrain.tuning import probe

CPU = torch.device("cpu")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3))


def test_precision_probe_times_each_candidate_and_disturbs_nothing():
    model, task = _model(), get_task("classification")
    x, y = torch.randn(64, 16, generator=torch.Generator().manual_seed(1)), torch.arange(64) % 3
    weights = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    trials = probe.precision_trials(
        model, lambda m: torch.optim.Adam(m.parameters(), lr=1e-2), lambda m: task.loss_sum(m(x), y) / len(y),
        CPU, ["fp32", "bf16", "fp16"],
    )
    assert set(trials) == {"fp32", "bf16", "fp16"}
    for trial in trials.values():
        assert trial.median_ms and trial.median_ms > 0
        assert trial.skipped or math.isfinite(trial.loss)
    assert trials["bf16"].skipped or abs(trials["bf16"].loss - trials["fp32"].loss) < 0.1
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert torch.equal(rng, torch.get_rng_state())


class _Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm, self.head = nn.LSTM(4, 8, batch_first=True), nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.lstm(x.view(len(x), 4, 4))
        self.lstm_dtype = out.dtype
        return self.head(out[:, -1])


def test_precision_probe_keeps_in_fp32_the_layers_the_run_would_keep(monkeypatch):
    """On a CPU that cannot run an LSTM in bf16, the bf16 run keeps it fp32 (issue 17): so does its probe,
    which times that run instead of failing (or measuring a path the run never takes)."""
    from leantrain.techniques import precision

    monkeypatch.setattr(precision, "runs_in_low_precision", lambda *args: False)
    model, task = _Recurrent(), get_task("classification")
    x, y = torch.randn(32, 16, generator=torch.Generator().manual_seed(1)), torch.arange(32) % 3
    dtypes = {}

    def loss(m):
        out = m(x)
        dtypes[torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32] = m.lstm_dtype
        return task.loss_sum(out, y) / len(y)

    trials = probe.precision_trials(model, lambda m: torch.optim.Adam(m.parameters()), loss, CPU, ["fp32", "bf16"],
                                    rounds=1)
    assert trials["bf16"].median_ms and "failed" not in (trials["bf16"].skipped or "")  # (slow under load: may be skipped)
    assert dtypes[torch.bfloat16] == torch.float32  # the LSTM ran with autocast off
    assert type(model.lstm) is nn.LSTM  # the run's own model is untouched

def test_optimizer_probe_times_each_kernel_on_copies_of_the_parameters():
    model = _model()
    weights = [p.detach().clone() for p in model.parameters()]
    factories = {k: (lambda params, k=k: torch.optim.Adam(params, foreach=k == "foreach", fused=k == "fused"))
                 for k in ("loop", "foreach", "fused")}
    trials = probe.optimizer_trials(model, factories, CPU)
    assert set(trials) == {"loop", "foreach", "fused"} and all(t.median_ms > 0 for t in trials.values())
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))


def test_free_threads_subtracts_busy_cores_and_keeps_at_least_one():
    assert free_threads(2, 0.0) == 2 and free_threads(2, 0.9) == 1 and free_threads(2, 2.0) == 1
    assert free_threads(8, None) == 8
    busy = busy_cores([0], interval_s=0.05)
    assert busy is None or busy >= 0.0


def test_cpu_flags_are_read_from_cpuinfo():
    info = "processor: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    assert cpu_flags(info) == ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    assert cpu_flags("flags : fpu sse avx2\n") == ["avx2"]


class Sleeper(probe._Stepper):
    def __init__(self, seconds):
        self.seconds, self.taken = seconds, 0

    def steps(self, n):
        for _ in range(n):
            time.sleep(self.seconds)
            self.taken += 1


def test_a_hopelessly_slow_alternative_costs_a_step_or_two_not_the_whole_probe():
    fast, slow = Sleeper(0.002), Sleeper(0.1)
    trials = probe._race({"fast": fast, "slow": slow}, CPU, rounds=2)
    assert slow.taken <= 2 and "slower than fast in warm-up" in trials["slow"].skipped
    assert not trials["fast"].skipped and len(trials["fast"].ms_per_step) == 2


class Broken(probe._Stepper):
    def steps(self, n):
        raise RuntimeError('"addmm_impl_cpu_" not implemented for \'Half\'')  # what torch says for a missing kernel


def test_an_alternative_that_fails_is_skipped_with_its_error_and_the_others_go_on():
    trials = probe._race({"fast": Sleeper(0.001), "broken": Broken()}, CPU, rounds=1)
    assert trials["broken"].skipped.startswith("failed: RuntimeError") and trials["fast"].median_ms
