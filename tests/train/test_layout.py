"""--procs auto: the faster layout by measurement (injected here), the same global batch either way, cached."""
import pytest

from leantrain.config import RunConfig
from leantrain.errors import UsageError
from leantrain.train import layout


@pytest.fixture
def timings(monkeypatch, tmp_path):
    monkeypatch.setenv("LEANTRAIN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(layout.ForeignCpuMeter, "cores", lambda self: 0.0)  # a quiet machine, whatever runs beside
    calls = []

    def install(single, multi, mpi=None):
        monkeypatch.setattr(layout, "mpi_usable", lambda config: mpi is not None)

        def fake_single(config, dist):
            calls.append(("single", config.batch_size, config.threads))
            return single

        def fake_multi(config, procs):
            calls.append(("multi" if config.parallel == "ddp" else config.parallel, config.batch_size, procs))
            return multi if config.parallel == "ddp" else mpi

        monkeypatch.setattr(layout, "time_steps", fake_single)
        monkeypatch.setattr(layout, "_time_launched", fake_multi)
        return calls

    return install


CONFIG = RunConfig.from_dict({"model": "mlp", "data": "healthcare-sim:n=512", "parallel": "ddp", "procs": "auto",
                              "batch_size": 32, "device": "cpu"})


def test_processes_win_when_they_are_faster_and_keep_the_per_process_batch(timings):
    calls = timings(single=1000.0, multi=1500.0)
    chosen = layout.choose(CONFIG, cores=2, say=lambda text: None)
    assert (chosen.procs, chosen.threads, chosen.batch_size) == (2, 1, 32)
    assert calls == [("single", 64, 2), ("multi", 32, 2)]  # the same global batch, 64, in both layouts


def test_one_process_wins_when_faster_and_takes_the_whole_global_batch(timings):
    timings(single=1500.0, multi=1000.0)
    chosen = layout.choose(CONFIG, cores=2, say=lambda text: None)
    assert (chosen.procs, chosen.threads, chosen.batch_size) == (1, 2, 64)
    assert chosen.samples_per_s == {"1 x 2 threads": 1500.0, "2 x 1 thread": 1000.0}


def test_a_probe_disturbed_by_other_processes_is_used_but_not_cached(timings, monkeypatch):
    calls = timings(single=1500.0, multi=1000.0)
    monkeypatch.setattr(layout.ForeignCpuMeter, "cores", lambda self: 3.5)
    assert "not cached" in layout.choose(CONFIG, cores=2, say=lambda text: None).why
    layout.choose(CONFIG, cores=2, say=lambda text: None)
    assert len(calls) == 4


def test_the_choice_is_cached_per_model_and_batch(timings):
    calls = timings(single=1500.0, multi=1000.0)
    said = []
    layout.choose(CONFIG, cores=2, say=said.append)
    again = layout.choose(CONFIG, cores=2, say=said.append)
    assert again.cached and len(calls) == 2 and "cached" in said[-1]
    layout.choose(CONFIG.replace(batch_size=16), cores=2, say=said.append)
    assert len(calls) == 4  # another batch: measured anew


def test_mpi_is_timed_where_it_can_run_and_taken_when_fastest(timings):
    calls = timings(single=1000.0, multi=1200.0, mpi=1300.0)
    chosen = layout.choose(CONFIG, cores=2, say=lambda text: None)
    assert (chosen.procs, chosen.threads, chosen.batch_size, chosen.parallel) == (2, 1, 32, "mpi")
    assert calls == [("single", 64, 2), ("multi", 32, 2), ("mpi", 32, 2)]
    assert chosen.samples_per_s == {"1 x 2 threads": 1000.0, "2 x 1 thread": 1200.0, "2 x 1 thread, mpi": 1300.0}


def test_ddp_is_kept_when_mpi_is_not_faster_and_threads_when_neither_is(timings):
    timings(single=1000.0, multi=1300.0, mpi=1300.0)
    assert layout.choose(CONFIG, cores=2, say=lambda text: None).parallel == "ddp"  # a tie: DDP needs no MPI
    timings(single=1500.0, multi=1300.0, mpi=1400.0)
    chosen = layout.choose(CONFIG.replace(batch_size=16), cores=2, say=lambda text: None)
    assert (chosen.procs, chosen.threads) == (1, 2)


def test_mpi_is_timed_only_where_installed_and_no_ddp_knob_is_set(monkeypatch):
    from leantrain.parallel import mpirun

    monkeypatch.setattr(mpirun, "mpirun_path", lambda: "/usr/bin/mpirun")
    assert not layout.mpi_usable(CONFIG.replace(ddp_bucket_mb=5))
    assert not layout.mpi_usable(CONFIG.replace(ddp_static_graph=True))

    def missing() -> str:
        raise UsageError("mpirun is not installed")

    monkeypatch.setattr(mpirun, "mpirun_path", missing)
    assert not layout.mpi_usable(CONFIG)


def test_procs_auto_needs_ddp():
    with pytest.raises(UsageError, match="procs auto chooses between processes and threads for --parallel ddp"):
        RunConfig.from_dict({"procs": "auto"})
    with pytest.raises(UsageError, match="positive integer or auto"):
        RunConfig.from_dict({"procs": "many", "parallel": "ddp"})
