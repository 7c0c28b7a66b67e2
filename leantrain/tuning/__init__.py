"""Machine-dependent settings chosen by measurement: precision, Adam kernel and threads (``auto`` values).

probe.py (timing alternatives side by side), choice.py (the rule), cache.py (costs once per machine and
model), resolve.py (a RunConfig's auto knobs -> choices). What this machine is: ``leantrain/machine.py``.
"""
from leantrain.tuning.resolve import AUTO, AUTO_ADAM, Measure, Tuned, auto_knobs, describe, resolve

__all__ = ["AUTO", "AUTO_ADAM", "Measure", "Tuned", "auto_knobs", "describe", "resolve"]
