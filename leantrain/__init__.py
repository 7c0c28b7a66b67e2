"""leantrain: which optimizations speed up training of your model, by how much, at what cost — measured.

The public names below are imported on first use (PEP 562), so ``import leantrain`` costs nothing and does not
import torch: the command line installs its signal handlers before anything slow is loaded, and a Ctrl-C or
SIGTERM during start-up is its usual one line (see interrupts.py).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it ("data" is the module itself)
_EXPORTS = {
    "data": "leantrain.data",
    "fit": "leantrain.train.fit",
    "advise": "leantrain.advice.api",
    "compare": "leantrain.experiments.notebook",
    "epochs_frame": "leantrain.experiments.notebook",
    "plot_epochs": "leantrain.experiments.notebook",
    "RunConfig": "leantrain.config",
    "UsageError": "leantrain.errors",
    **{name: "leantrain.techniques" for name in (
        "Technique", "MixedPrecision", "GradClip", "ActivationCheckpointing", "AdaptiveAccumulation", "WarmupCosine",
        "ComplexityMatching", "Compile")},
    **{name: "leantrain.train.callbacks" for name in ("Callback", "EarlyStopping", "KeepBest")},
    "FitResult": "leantrain.train.result",
}
__all__ = [
    "data", "fit", "advise", "compare", "epochs_frame", "plot_epochs",
    "RunConfig", "UsageError", "Technique", "MixedPrecision", "GradClip", "ActivationCheckpointing",
    "AdaptiveAccumulation", "WarmupCosine", "ComplexityMatching", "Compile", "Callback", "EarlyStopping", "KeepBest",
    "FitResult", "__version__",
]
assert set(__all__) == {*_EXPORTS, "__version__"}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'leantrain' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    value = module if name == "data" else getattr(module, name)
    if name in ("fit", "FitResult"):
        _show_results_with_experiments_views()
    globals()[name] = value  # found directly from now on
    return value


def _show_results_with_experiments_views() -> None:
    """FitResult is data (train/); how it is shown is experiments' (docs/ARCHITECTURE.md): handed to it here, the
    one place above both layers."""
    from leantrain.experiments.views import RESULT_VIEWS
    from leantrain.train.result import FitResult

    FitResult.views = RESULT_VIEWS


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:
    from leantrain import data
    from leantrain.advice.api import advise
    from leantrain.config import RunConfig
    from leantrain.errors import UsageError
    from leantrain.experiments.notebook import compare, epochs_frame, plot_epochs
    from leantrain.techniques import (
        ActivationCheckpointing,
        AdaptiveAccumulation,
        Compile,
        ComplexityMatching,
        GradClip,
        MixedPrecision,
        Technique,
        WarmupCosine,
    )
    from leantrain.train.callbacks import Callback, EarlyStopping, KeepBest
    from leantrain.train.fit import fit
    from leantrain.train.result import FitResult
