"""Moved to ``leantrain.tuning.ranks``: tuning sits above the training core, so the core imports none of it. This
name stays only for ``train/run.py``'s import; once that imports ``leantrain.tuning``, this file goes."""
from leantrain.tuning.ranks import threads_per_worker, tune_on_ranks

__all__ = ["threads_per_worker", "tune_on_ranks"]
