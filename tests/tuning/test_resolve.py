"""Resolving auto knobs: forced values win, choices are cached per machine and model, and recorded."""
import pytest
import torch

import leantrain as lt
from leantrain import machine
from leantrain.models import build
from leantrain.tuning import Measure, describe, resolve
from leantrain.tuning.choice import Trial


class Quiet:
    """A foreign-CPU meter that reports an idle machine, so the cache is written."""

    def cores(self):
        return 0.0


class Fake:
    """Injected measurements: chosen timings and losses, and a count of probes run."""

    def __init__(self, precision=None, optimizer=None, busy=0.0):
        self.precision = precision or {"fp32": (10.0, 1.0), "bf16": (4.0, 1.01)}
        self.optimizer = optimizer or {"adam": 2.0, "foreach-adam": 1.0, "fused-adam": 0.5}
        self.busy, self.probes = busy, []

    def measure(self):
        return Measure(busy_cores=lambda cpus: self.busy, precision_trials=self._precision,
                       optimizer_trials=self._optimizer, cpu_meter=Quiet)

    def _precision(self, model, make_optimizer, forward_loss, device, candidates):
        self.probes.append("precision")
        return {p: Trial([ms], loss) for p, (ms, loss) in self.precision.items() if p in candidates}

    def _optimizer(self, model, factories, device):
        self.probes.append("optimizer")
        assert set(factories) == set(self.optimizer)
        return {k: Trial([ms]) for k, ms in self.optimizer.items()}


@pytest.fixture
def data():
    return lt.data.load("healthcare-sim:n=300")


def _config(**changes):
    return lt.RunConfig(data="healthcare-sim:n=300", batch_size=32, device="cpu").replace(**changes)


def _resolve(config, data, fake, model=None, **kwargs):
    model = model if model is not None else build(config.model, data)
    return resolve(config, model, data, torch.device("cpu"), measure=fake.measure(), **kwargs)


def test_forced_values_always_win_over_auto_and_are_never_measured(data):
    fake = Fake()
    for precision in ("fp32", "bf16", "fp16"):
        tuned = _resolve(_config(precision=precision, optimizer="adam", threads=2), data, fake)
        assert tuned.config.precision == precision and tuned.config.optimizer == "adam" and tuned.record == {}
    assert fake.probes == []


def test_auto_resolves_to_the_measured_choice_and_the_record_holds_the_timings(data):
    fake = Fake()
    said = []
    tuned = _resolve(_config(precision="auto", optimizer="auto-adam"), data, fake, say=said.append)
    assert tuned.config.precision == "bf16" and tuned.config.optimizer == "fused-adam"
    assert fake.probes == ["optimizer", "precision"]
    entry = tuned.record["precision"]
    assert entry["choice"] == "bf16" and entry["source"] == "measured"
    assert entry["trials"]["fp32"]["ms_per_step"] == 10.0 and entry["trials"]["bf16"]["loss"] == 1.01
    assert tuned.record["cpu_capability"] == machine.cpu_capability()
    assert said[1].startswith("precision auto -> bf16 (fp32 10 ms/step, bf16 4 ms")


def test_a_diverging_precision_is_not_chosen_end_to_end(data):
    fake = Fake(precision={"fp32": (10.0, 1.0), "bf16": (4.0, float("nan"))})
    tuned = _resolve(_config(precision="auto"), data, fake)
    assert tuned.config.precision == "fp32"
    assert "outside tolerance" in tuned.record["precision"]["rejected"]["bf16"]


def test_the_choice_is_cached_and_measured_again_when_cpu_torch_or_model_shape_change(data, monkeypatch):
    fake = Fake()
    config = _config(precision="auto")
    assert _resolve(config, data, fake).record["precision"]["source"] == "measured"
    assert _resolve(config, data, fake).record["precision"]["source"] == "cache"
    assert fake.probes == ["precision"]

    fake.precision = {"fp32": (10.0, 1.0), "bf16": (40.0, 1.0)}  # e.g. an AVX2 CPU: bf16 emulated
    monkeypatch.setattr(machine, "cpu_name", lambda: "AMD EPYC (AVX2 only)")
    assert _resolve(config, data, fake).config.precision == "fp32"
    other = "AVX512" if machine.cpu_capability() == "AVX2" else "AVX2"  # a capability this CPU does not report
    monkeypatch.setattr(machine, "kernel_isa", lambda: other)
    _resolve(config, data, fake)
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    _resolve(config, data, fake)
    _resolve(config, data, fake, model=build("mlp:hidden=64", data))  # another shape
    _resolve(config.replace(batch_size=64), data, fake)  # another batch size
    assert fake.probes == ["precision"] * 6
    assert _resolve(config, data, fake).record["precision"]["source"] == "cache"


def test_a_disturbed_probe_is_used_but_not_cached(data):
    class Busy:
        def cores(self):
            return 1.0

    fake = Fake()
    measure = fake.measure()
    measure.cpu_meter = Busy
    config = _config(precision="auto")
    for _ in range(2):
        resolve(config, build(config.model, data), data, torch.device("cpu"), measure=measure)
    assert fake.probes == ["precision", "precision"]


def test_threads_auto_takes_the_cpus_other_processes_leave_free(data, monkeypatch):
    monkeypatch.setattr(machine, "usable_cpus", lambda: [0, 1])
    before = torch.get_num_threads()
    try:
        tuned = _resolve(_config(threads="auto"), data, Fake(busy=0.95))
        assert tuned.config.threads == 1 and torch.get_num_threads() == 1
        assert tuned.record["threads"] == {"choice": 1, "cpus": 2, "busy_cores": 0.95, "source": "measured"}
        assert _resolve(_config(threads="auto"), data, Fake(busy=0.1)).config.threads == 2
        assert _resolve(_config(threads="auto"), data, Fake(busy=1.9)).config.threads == 1  # never zero
    finally:
        torch.set_num_threads(before)


def test_saved_choices_are_reused_without_measuring(data):
    fake = Fake()
    saved = {"precision": {"choice": "fp16", "trials": {}, "source": "measured"}}
    tuned = _resolve(_config(precision="auto"), data, fake, saved=saved)
    assert tuned.config.precision == "fp16" and tuned.record["precision"]["source"] == "checkpoint"
    assert fake.probes == []


def test_describe_says_why_an_alternative_was_skipped():
    entry = {"choice": "fp32", "source": "cache",
             "trials": {"fp32": {"ms_per_step": 12.1}, "bf16": {"ms_per_step": 71.3}, "fp16": {"skipped": "no fp16"}},
             "rejected": {"bf16": "5.9x slower than fp32 in warm-up", "fp16": "no fp16"}}
    assert describe("precision", entry) == ("precision auto -> fp32 (fp32 12.1 ms/step, bf16 71.3 ms: 5.9x slower "
                                            "than fp32 in warm-up, fp16 skipped: no fp16, cached)")


def test_a_cpu_capped_to_avx2_is_another_machine_for_every_cache(monkeypatch):
    from leantrain.machine import kernel_isa

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    native = kernel_isa()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert kernel_isa() == f"{native}|onednn<=AVX2" and "onednn<=AVX2" in machine.machine_key(torch.device("cpu"))
