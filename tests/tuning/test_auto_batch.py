"""batch_size auto: the knee of measured samples/s, the learning rate scaled to it, cached, forced values win."""
import math

import pytest
import torch

import leantrain as lt
from leantrain.errors import UsageError
from leantrain.models import build
from leantrain.tuning import Measure, describe, probe, resolve
from leantrain.tuning.choice import Trial, choose_batch, scaled_lr


class Quiet:
    def cores(self):
        return 0.0


def _ms(samples_per_s):
    """Injected timings: milliseconds per step for each batch, from samples/s."""
    return {batch: Trial([1e3 * batch / rate]) for batch, rate in samples_per_s.items()}


def test_the_smallest_batch_within_ten_percent_of_the_best_throughput_is_chosen():
    choice, why = choose_batch(_ms({64: 10_000, 128: 18_000, 256: 30_000, 512: 34_000, 1024: 35_000}))
    assert choice == 512  # 34k >= 0.9 * 35k; 256's 30k is not
    assert "86% of the best" in why["256"] and "1.03x 512's" in why["1024"]
    choice, _ = choose_batch(_ms({64: 50_000, 128: 48_000}))
    assert choice == 64  # throughput already flat: the smallest keeps the most steps


def test_a_batch_that_failed_is_never_chosen():
    trials = {**_ms({64: 10_000, 128: 19_000}), 256: Trial(skipped="failed: RuntimeError: out of memory")}
    choice, why = choose_batch(trials)
    assert choice == 128 and why["256"].startswith("failed")


def test_the_learning_rate_scales_by_the_square_root_for_adam_and_linearly_for_sgd():
    assert scaled_lr(1e-3, 256, 64, "adam") == pytest.approx(2e-3)
    assert scaled_lr(1e-3, 256, 64, "fused-adam") == pytest.approx(2e-3)
    assert scaled_lr(0.1, 256, 64, "sgd") == pytest.approx(0.4)
    assert scaled_lr(1e-3, 64, 64, "adam") == 1e-3


def test_candidates_double_from_lr_batch_while_an_epoch_keeps_eight_steps():
    config = lt.RunConfig(batch_size="auto", lr_batch=64)
    assert config.batch_candidates(16_000) == [64, 128, 256, 512, 1024]  # 2048 would leave 7 steps
    assert config.batch_candidates(100) == [64]
    assert lt.RunConfig(batch_size="auto").batch_candidates(10**7)[-1] == 8192
    assert lt.RunConfig(batch_size=48).batch_candidates(16_000) == [48]


class Fake:
    def __init__(self, rates):
        self.rates, self.calls = rates, []

    def measure(self):
        return Measure(batch_trials=self._batch, cpu_meter=Quiet)

    def _batch(self, model, make_optimizer, forward_loss_at, device, candidates, precision):
        self.calls.append((list(candidates), precision))
        assert math.isfinite(float(forward_loss_at(candidates[0])(model).detach()))  # a real batch of that size
        return _ms({b: self.rates[b] for b in candidates})


@pytest.fixture
def data():
    return lt.data.load("healthcare-sim:n=2000")


def _resolve(config, data, fake, **kwargs):
    return resolve(config, build(config.model, data), data, torch.device("cpu"), measure=fake.measure(), **kwargs)


def test_auto_batch_resolves_batch_and_lr_records_why_and_is_cached(data):
    rates = {64: 10_000, 128: 30_000}
    config = lt.RunConfig(data="healthcare-sim:n=2000", batch_size="auto", lr=1e-3, device="cpu", precision="bf16")
    fake, said = Fake(rates), []
    tuned = _resolve(config, data, fake, say=said.append)
    assert tuned.config.batch_size == 128 and tuned.config.lr == pytest.approx(1e-3 * math.sqrt(2))
    assert fake.calls == [([64, 128], "bf16")]  # 1,600 training samples: 256 would leave 6 steps
    entry = tuned.record["batch_size"]
    assert entry["choice"] == 128 and entry["lr_rule"] == "square root" and entry["source"] == "measured"
    assert said[0].startswith("batch_size auto -> 128, lr 0.00141 (0.001 at 64, square root rule; samples/s: 64 10,000/s")
    again = _resolve(config, data, fake)
    assert again.config.batch_size == 128 and len(fake.calls) == 1 and again.record["batch_size"]["source"] == "cache"
    resumed = _resolve(config, data, Fake(rates), saved=tuned.record)
    assert resumed.config.batch_size == 128 and resumed.config.lr == tuned.config.lr
    assert describe("batch_size", tuned.record["batch_size"]).startswith("batch_size auto -> 128")


def test_a_given_batch_size_is_never_timed(data):
    fake = Fake({})
    tuned = _resolve(lt.RunConfig(data="healthcare-sim:n=2000", batch_size=256, device="cpu"), data, fake)
    assert tuned.config.batch_size == 256 and fake.calls == []


def test_batch_size_values_are_checked_at_the_edge():
    with pytest.raises(UsageError, match="batch_size must be a positive integer or auto, got 'big'"):
        lt.RunConfig(batch_size="big").validated()
    with pytest.raises(UsageError, match="batch_size auto and procs auto"):
        lt.RunConfig(batch_size="auto", parallel="ddp", procs="auto").validated()
    with pytest.raises(UsageError, match="batch_size auto is not for parallel pipeline"):
        lt.RunConfig(batch_size="auto", parallel="pipeline", procs=2).validated()
    assert lt.RunConfig(batch_size="128").validated().batch_size == 128


def test_the_real_probe_times_each_batch_and_stops_climbing_at_a_slow_step(data, monkeypatch):
    model = build("mlp", data)
    x, y = data.x_train, data.y_train

    def forward_loss_at(b):
        return lambda m: torch.nn.functional.cross_entropy(m(x[:b]), y[:b])

    trials = probe.batch_trials(model, lambda m: torch.optim.Adam(m.parameters()), forward_loss_at,
                                torch.device("cpu"), [32, 64, 128], "fp32")
    assert list(trials) == [32, 64, 128] and all(t.median_ms > 0 for t in trials.values())
    monkeypatch.setattr(probe, "MAX_BATCH_STEP_S", 0.0)  # every step is "slow": the climb stops after the first
    assert list(probe.batch_trials(model, lambda m: torch.optim.Adam(m.parameters()), forward_loss_at,
                                   torch.device("cpu"), [32, 64, 128], "fp32")) == [32]


def test_a_run_with_batch_size_auto_trains_at_the_chosen_batch(tmp_path):
    record = lt.fit(build("mlp", lt.data.load("healthcare-sim:n=1200")), lt.data.load("healthcare-sim:n=1200"),
                    epochs=1, batch_size="auto", device="cpu", checkpoint_dir=tmp_path)
    chosen = record["run"]["autotune"]["batch_size"]["choice"]
    assert chosen in (64, 128) and record["epochs"][0]["train_steps"] == math.ceil(960 / chosen)


def test_an_auto_batch_run_is_the_run_with_its_choice_forced_schedule_included(tmp_path, monkeypatch):
    import importlib

    resolving = importlib.import_module("leantrain.tuning.resolve")  # the module (the package exports the function)

    monkeypatch.setattr(resolving, "choose_batch", lambda trials: (max(trials), {}))  # the larger: lr must scale
    data = lt.data.load("healthcare-sim:n=2400")
    options = {"epochs": 2, "device": "cpu", "schedule": "warmup-cosine", "lr": 1e-3, "seed": 0}
    torch.manual_seed(0)
    auto = lt.fit(build("mlp", data), data, batch_size="auto", checkpoint_dir=tmp_path / "auto", **options)
    assert auto["run"]["autotune"]["batch_size"]["choice"] == 128  # 1,920 training samples: 64 or 128
    torch.manual_seed(0)
    forced = lt.fit(build("mlp", data), data, batch_size=128, checkpoint_dir=tmp_path / "forced",
                    **{**options, "lr": 1e-3 * math.sqrt(2)})
    assert [e["train_loss"] for e in auto["epochs"]] == [e["train_loss"] for e in forced["epochs"]]
    assert [e["lr"] for e in auto["epochs"]] == [e["lr"] for e in forced["epochs"]]


def test_each_rank_s_share_of_the_epoch_bounds_the_candidates(data):
    fake = Fake({64: 10_000, 128: 30_000})
    config = lt.RunConfig(data="healthcare-sim:n=2000", batch_size="auto", device="cpu")
    tuned = resolve(config, build(config.model, data), data, torch.device("cpu"), measure=fake.measure(), data_ranks=2)
    assert fake.calls[0][0] == [64] and tuned.config.batch_size == 64  # 800 samples per rank: 128 leaves 6 steps


def test_your_own_optimizer_and_an_auto_batch_are_refused(tmp_path):
    data = lt.data.load("healthcare-sim:n=600")
    with pytest.raises(UsageError, match="batch_size auto scales the learning rate"):
        lt.fit(build("mlp", data), data, batch_size="auto", device="cpu",
               optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
