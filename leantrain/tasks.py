"""What a task means for the loop: its loss, its quality metric, and what throughput counts.

Losses are returned as sums over the task's units (samples, or tokens), so that the loop can divide
by the number of units in a whole optimizer step: with gradient accumulation over micro-batches of
different sizes, that is the mean per unit, not a mean of per-micro-batch means.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from leantrain.registry import Registry


class Task(Protocol):
    metric: str  # name of the quality metric in results, e.g. "val_acc"
    higher_is_better: bool
    # The training-split accuracy the loop records per epoch (correct units / units, counted on the training
    # forward passes already made, so no extra pass); None where the task has no accuracy.
    train_metric: str | None
    # Optional: ``predictions(output) -> Tensor`` where ``correct`` is ``(predictions(output) == target).sum()``;
    # the loop then makes only the predictions each step and compares many steps' at once (train/correct_count.py).

    def forward(self, model: Callable[..., Any], x: Tensor, y: Tensor) -> Any:
        """Run the model on a batch. Most tasks call ``model(x)``; seq2seq passes targets for teacher forcing,
        and may return a richer output in eval mode (e.g. logits and a greedy decode)."""
        ...

    def loss_sum(self, output: Tensor, target: Tensor) -> Tensor: ...

    def units(self, target: Tensor) -> int:
        """How many loss units (samples or tokens) a batch holds; the divisor of the loss."""
        ...

    def tokens(self, target: Tensor) -> int | None:
        """Tokens in a batch, for tokens/s; None where the task has no tokens."""
        ...

    def metric_sums(self, output: Tensor, target: Tensor) -> dict[str, Tensor]: ...

    def correct(self, output: Tensor, target: Tensor) -> Tensor | None:
        """Correct units in a training batch's output (a device scalar: no host sync), for ``train_metric``;
        None where the task has none. Called with gradients on, so it must build no graph (an argmax count)."""
        ...

    def finalize(self, sums: dict[str, float], units: int) -> dict[str, float]: ...


TASKS: Registry = Registry("task")


class Smoothable:
    """A cross-entropy task that can train with label smoothing (Szegedy et al. 2016): the target puts
    ``1 - label_smoothing`` on the true class and spreads the rest evenly. Only while gradients are on:
    validation losses and perplexities stay the plain negative log-likelihood, comparable across runs."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def _smoothing(self) -> float:
        return self.label_smoothing if torch.is_grad_enabled() else 0.0


@TASKS.register("classification", "cross-entropy loss, accuracy")
class Classification(Smoothable):
    metric = "val_acc"
    higher_is_better = True
    train_metric = "train_acc"
    units_are_samples = True  # the loss unit is one sample: ranks with equal batches hold equal units

    def forward(self, model: Callable[..., Any], x: Tensor, y: Tensor) -> Tensor:
        return model(x)

    def loss_sum(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output.float(), target, reduction="sum", label_smoothing=self._smoothing())

    def units(self, target: Tensor) -> int:
        return target.shape[0]

    def tokens(self, target: Tensor) -> int | None:
        return None

    def metric_sums(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        return {"correct": self.correct(output, target)}

    def predictions(self, output: Tensor) -> Tensor:
        return output.argmax(dim=-1)

    def correct(self, output: Tensor, target: Tensor) -> Tensor:
        # Compared in place in the argmax's own int64 tensor: the same count, one allocation less.
        return self.predictions(output).eq_(target).sum()

    def finalize(self, sums: dict[str, float], units: int) -> dict[str, float]:
        return {"val_acc": sums["correct"] / max(units, 1)}


@TASKS.register("reconstruction", "squared error per element, MSE and PSNR (data in [0, 1])")
class Reconstruction:
    """Unit: one tensor ELEMENT (pixel x channel), so the per-unit mean loss is the usual MSE
    (``nn.MSELoss()``). PSNR = 10 log10(1 / MSE) assumes data in [0, 1], and takes the MSE of the whole
    validation split (not a mean of per-image PSNRs)."""

    metric = "val_psnr"
    higher_is_better = True
    train_metric = None  # no accuracy: the training loss is the MSE itself

    def forward(self, model: Callable[..., Any], x: Tensor, y: Tensor) -> Tensor:
        return model(x)

    def loss_sum(self, output: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(output.float(), target.float(), reduction="sum")

    def units(self, target: Tensor) -> int:
        return target.numel()

    def tokens(self, target: Tensor) -> int | None:
        return None

    def metric_sums(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        return {"squared_error": self.loss_sum(output, target)}

    def correct(self, output: Tensor, target: Tensor) -> Tensor | None:
        return None

    def finalize(self, sums: dict[str, float], units: int) -> dict[str, float]:
        mse = sums["squared_error"] / max(units, 1)
        return {"val_mse": mse, "val_psnr": 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf}


LOSSES: dict[str, Callable[..., Tensor]] = {"mse": F.mse_loss, "l1": F.l1_loss, "huber": F.huber_loss}


@TASKS.register("regression", "real-valued targets: MSE (or L1, Huber) loss per element; MSE, MAE, R^2")
class Regression:
    """y: float, the model's output shape per sample (a (N,) target needs an (N,) output, not (N, 1): no
    broadcasting). Unit: one target ELEMENT, so the per-unit mean loss is ``nn.MSELoss()``'s. R^2 is
    1 - SSE/SST with SST about each target column's own mean, averaged over columns weighted by their
    variance (torchmetrics' ``multioutput="variance_weighted"``; the plain R^2 for one column). Sums are
    kept in float64: SST = sum(y^2) - (sum y)^2 / n cancels badly in float32."""

    metric = "val_mse"
    higher_is_better = False
    units_are_samples = True  # elements per sample are fixed: ranks with equal batches hold equal units
    train_metric = None  # no accuracy: the training loss is the error itself

    def __init__(self, loss: str = "mse"):
        if loss not in LOSSES:
            raise ValueError(f"regression loss {loss!r} is not one of: {', '.join(LOSSES)}")
        self.loss = loss

    def forward(self, model: Callable[..., Any], x: Tensor, y: Tensor) -> Tensor:
        return model(x)

    def correct(self, output: Tensor, target: Tensor) -> Tensor | None:
        return None

    def loss_sum(self, output: Tensor, target: Tensor) -> Tensor:
        return LOSSES[self.loss](output.float(), target.float(), reduction="sum")

    def units(self, target: Tensor) -> int:
        return target.numel()

    def tokens(self, target: Tensor) -> int | None:
        return None

    def metric_sums(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        y, error = target.double().reshape(len(target), -1), (output.double() - target.double()).reshape(len(target), -1)
        sums = {"squared_error": error.square().sum(), "absolute_error": error.abs().sum()}
        for column in range(y.shape[1]):  # per column: R^2 is about each column's own mean
            sums[f"y{column}"], sums[f"y{column}_sq"] = y[:, column].sum(), y[:, column].square().sum()
            sums[f"y{column}_se"] = error[:, column].square().sum()
        return sums

    def finalize(self, sums: dict[str, float], units: int) -> dict[str, float]:
        columns = sum(1 for k in sums if k.endswith("_sq"))
        n = units / max(columns, 1)  # samples
        total = sum(sums[f"y{j}_sq"] - sums[f"y{j}"] ** 2 / max(n, 1) for j in range(columns))
        r2 = 1.0 - sum(sums[f"y{j}_se"] for j in range(columns)) / total if total > 0 else math.nan
        return {"val_mse": sums["squared_error"] / max(units, 1), "val_mae": sums["absolute_error"] / max(units, 1),
                "val_r2": r2}


@TASKS.register("language-model", "next-token cross-entropy per token, perplexity")
class LanguageModel(Smoothable):
    """x: (N, L) token ids, y: (N, L) the next tokens; no padding (fixed-length chunks of a corpus), so
    the unit, a TOKEN, is counted as ``y.numel()`` with no host sync."""

    metric = "val_ppl"
    higher_is_better = False
    train_metric = "train_token_acc"

    def forward(self, model: Callable[..., Any], x: Tensor, y: Tensor) -> Tensor:
        return model(x)

    def loss_sum(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output.flatten(0, 1).float(), target.flatten(), reduction="sum",
                               label_smoothing=self._smoothing())

    def units(self, target: Tensor) -> int:
        return target.numel()

    def tokens(self, target: Tensor) -> int | None:
        return target.numel()

    def metric_sums(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        return {"nll": self.loss_sum(output, target), "correct": self.correct(output, target)}

    def correct(self, output: Tensor, target: Tensor) -> Tensor:
        return (output.argmax(dim=-1) == target).sum()

    def finalize(self, sums: dict[str, float], units: int) -> dict[str, float]:
        nll = sums["nll"] / max(units, 1)
        return {"val_ppl": math.exp(min(nll, 700.0)), "val_token_acc": sums["correct"] / max(units, 1)}


@TASKS.register("seq2seq", "teacher-forced cross-entropy per target token; greedy-decode exact match")
class SequenceToSequence(Smoothable):
    """x: (N, S) source ids; y: (N, T) target ids BOS ... EOS, both padded with PAD. The model sees
    ``y[:, :-1]`` and predicts ``y[:, 1:]``; the unit is a non-pad target TOKEN (counting them syncs
    with the device once per batch). Under ``torch.no_grad()`` (evaluation) the model is asked for a
    greedy decode as well, ``model(x, y_in, decode=True) -> (logits, tokens)``; the loss stays the
    teacher-forced one, the metrics are the decode's: token accuracy over non-pad target positions and
    exact match of whole sequences (up to and including EOS)."""

    metric = "val_exact_match"
    higher_is_better = True
    # Teacher-forced (training runs no decode): compare with val_teacher_forced_acc, not the decode's token acc.
    train_metric = "train_teacher_forced_acc"
    PAD = 0  # the data sets' convention: info["pad_index"] == 0

    def forward(self, model: Callable[..., Any], x: Tensor, y: Tensor) -> Any:
        if torch.is_grad_enabled():
            return model(x, y[:, :-1])
        return model(x, y[:, :-1], decode=True)

    def loss_sum(self, output: Any, target: Tensor) -> Tensor:
        logits = output[0] if isinstance(output, tuple) else output
        return F.cross_entropy(
            logits.flatten(0, 1).float(), target[:, 1:].flatten(), ignore_index=self.PAD, reduction="sum",
            label_smoothing=self._smoothing(),
        )

    def units(self, target: Tensor) -> int:
        return int((target[:, 1:] != self.PAD).sum())

    def tokens(self, target: Tensor) -> int | None:
        return self.units(target)

    def metric_sums(self, output: Any, target: Tensor) -> dict[str, Tensor]:
        logits, decoded = output if isinstance(output, tuple) else (output, output.argmax(dim=-1))
        gold = target[:, 1:]
        real = gold != self.PAD
        return {
            "correct": ((decoded == gold) & real).sum(),
            "teacher_forced_correct": ((logits.argmax(dim=-1) == gold) & real).sum(),
            "exact": (decoded == gold).all(dim=1).sum(),
            "sequences": torch.tensor(len(gold)),
        }

    def correct(self, output: Any, target: Tensor) -> Tensor:
        logits = output[0] if isinstance(output, tuple) else output
        gold = target[:, 1:]
        return ((logits.argmax(dim=-1) == gold) & (gold != self.PAD)).sum()

    def finalize(self, sums: dict[str, float], units: int) -> dict[str, float]:
        return {
            "val_exact_match": sums["exact"] / max(sums["sequences"], 1),
            "val_token_acc": sums["correct"] / max(units, 1),
            "val_teacher_forced_acc": sums["teacher_forced_correct"] / max(units, 1),
        }


def get_task(name: str, **options: Any) -> Task:
    return TASKS.get(name).builder(**options)

