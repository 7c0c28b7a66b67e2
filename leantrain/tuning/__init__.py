"""Machine-dependent settings chosen by measurement: precision, Adam kernel and threads (``auto`` values).

probe.py (timing alternatives side by side), choice.py (the rule), cache.py (costs once per machine and
model), resolve.py (a RunConfig's auto knobs -> choices), ranks.py (who measures on several ranks). What this
machine is: ``leantrain/machine.py``.

A layer between the training core and a run's orchestration: tuning times real steps with the core's meters,
memory estimate and optimizers (``train/metrics.py``, ``memory.py``, ``optim.py``, ``adapters.py``); a run's
orchestration (``train/run.py``) calls it. No other module of ``train/`` imports it (``tests/test_layers.py``).
"""
from leantrain.tuning.ranks import threads_per_worker, tune_on_ranks
from leantrain.tuning.resolve import AUTO, AUTO_ADAM, Measure, Tuned, auto_knobs, decided_once, describe, resolve

__all__ = ["AUTO", "AUTO_ADAM", "Measure", "Tuned", "auto_knobs", "decided_once", "describe", "resolve", "threads_per_worker",
           "tune_on_ranks"]
