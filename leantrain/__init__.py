"""leantrain: which optimizations speed up training of your model, by how much, at what cost — measured."""
from leantrain import data
from leantrain.config import RunConfig
from leantrain.errors import UsageError
from leantrain.experiments.notebook import compare, epochs_frame, plot_epochs
from leantrain.experiments.views import RESULT_VIEWS
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

FitResult.views = RESULT_VIEWS  # FitResult is data (train/); how it is shown is experiments' (docs/ARCHITECTURE.md)

__version__ = "0.1.0"
__all__ = [
    "data", "fit", "compare", "epochs_frame", "plot_epochs",
    "RunConfig", "UsageError", "Technique", "MixedPrecision", "GradClip", "ActivationCheckpointing",
    "AdaptiveAccumulation", "WarmupCosine", "ComplexityMatching", "Compile", "Callback", "EarlyStopping", "KeepBest",
    "FitResult", "__version__",
]
