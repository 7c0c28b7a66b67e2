"""Screening: each candidate tried for one dry step on the user's model, data and machine, before any is measured.

The dry step is a run's own phases up to its preflight (``Run.dry_run``): the settings validated, the model built
and prepared as it would train (checkpoint wrapping, precision fallbacks), one training step in the run's precision
and the memory estimate. A candidate that fails there is listed with its one-line reason and never measured.
``auto`` settings are screened the same way: their probes measure, and the choice is shown.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from leantrain.advice.candidates import Candidate
from leantrain.config import RunConfig
from leantrain.data.batches import bucket_pad_index, expected_padding_trimmed
from leantrain.data.dataset import Dataset
from leantrain.errors import UsageError
from leantrain.train.run import Run, RunRequest

# Settings that change what a step holds in memory: a candidate changing one has its memory estimated when screened.
MEMORY_KEYS = frozenset({"batch_size", "precision", "checkpointing", "accumulation", "parallel", "procs", "complexity"})
# The auto settings screened beside the candidates: their probes choose on this machine, for this model.
# Most informative first: batch_size auto finds a batch no candidate tries; the others choose among candidates.
AUTO_SETTINGS = {"batch_size": "auto", "optimizer": "auto-adam", "threads": "auto", "precision": "auto"}
MIN_TRIMMED = 0.05  # trim_padding: the share of padded positions it must be expected to cut to be raced


@dataclass(frozen=True)
class Screened:
    candidate: Candidate
    config: RunConfig | None  # the candidate's run configuration; None where it does not apply
    reason: str | None = None  # why it does not apply (one line)
    seconds: float = 0.0
    chose: dict[str, Any] = field(default_factory=dict)  # an auto setting's choice: {"precision": "bf16"}

    @property
    def applies(self) -> bool:
        return self.config is not None


RequestFor = Callable[[RunConfig], RunRequest]


def one_line(error: BaseException) -> str:
    """An exception as the one line a user reads: its own message's first line, the type where it is not a usage error."""
    text = (str(error).strip().splitlines() or [""])[0][:300]
    if isinstance(error, UsageError):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def screen(candidate: Candidate, baseline: dict[str, Any], request_for: RequestFor) -> Screened:
    """Validate the candidate's configuration and take one dry step with it; never raises for the candidate's sake."""
    if candidate.not_applicable:
        return Screened(candidate, None, candidate.not_applicable)
    start = time.perf_counter()
    try:
        config = RunConfig.from_dict(candidate.apply(baseline), where=candidate.name).validated(candidate.name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a fallback's warning is the run's to give, when it is measured
            run = Run(request_for(_dry(config, candidate)))
            tuned = run.dry_run()
        if candidate.technique == "trim_padding":
            _check_worth_trimming(run.dataset, tuned.config)
    except Exception as error:  # noqa: BLE001  (any failure: the candidate does not apply, and why)
        reason = one_line(error).removeprefix(f"{candidate.name}: ")  # said beside the candidate's name already
        return Screened(candidate, None, reason, time.perf_counter() - start)
    chose = {knob: entry.get("choice") for knob, entry in tuned.record.items() if isinstance(entry, dict)}
    if "lr" in tuned.record.get("batch_size", {}):
        chose["lr"] = tuned.record["batch_size"]["lr"]  # batch_size auto scales the lr with the batch it chose
    return Screened(candidate, config, None, time.perf_counter() - start, chose)


def _check_worth_trimming(dataset: Dataset, config: RunConfig) -> None:
    """Trimming saves only where a random batch's longest rows fall short of the padded width: below MIN_TRIMMED of
    the positions it is not worth a race (data padded to nearly every row's length)."""
    share = expected_padding_trimmed(dataset.x_train, dataset.y_train, bucket_pad_index(dataset, "trim_padding"),
                                     int(config.batch_size))
    if share < MIN_TRIMMED:
        raise UsageError(f"a random batch of {config.batch_size} would be trimmed by {share:.1%} of its padded "
                         f"positions (expected from the rows' lengths): below {MIN_TRIMMED:.0%}, not worth a race")


def concrete(screened: Screened) -> dict[str, Any]:
    """An auto setting's changes as the values it chose (batch_size auto: the batch and its scaled lr)."""
    changes = {k: screened.chose.get(k, v) for k, v in screened.candidate.changes.items() if k != "lr_batch"}
    if "batch_size" in screened.candidate.changes and "lr" in screened.chose:
        changes["lr"] = screened.chose["lr"]
    return changes


def _dry(config: RunConfig, candidate: Candidate) -> RunConfig:
    """The configuration the dry step runs: launched candidates (several processes) as one worker would, in this
    process (the launch itself is tried when measured); the memory estimate (two more dry steps) only where the
    candidate changes what memory holds: the baseline's covers the rest."""
    if not MEMORY_KEYS & set(candidate.changes) and candidate.technique != "baseline":
        config = config.replace(memory_check=False)
    if config.procs is None:
        return config
    return config.replace(parallel="none", procs=None)


def auto_candidates(baseline: dict[str, Any], tried: list[Candidate]) -> list[Candidate]:
    """The ``auto`` settings the baseline does not already use, as candidates for screening (their choice is shown)."""
    out = []
    for key, auto in AUTO_SETTINGS.items():
        if baseline.get(key) == auto or (key == "optimizer" and baseline.get(key) not in ("adam",)):
            continue
        if any(c.changes == {key: auto} for c in tried):
            continue  # a candidate tries it already
        changes: dict[str, Any] = {key: auto}
        if key == "batch_size" and isinstance(baseline.get("batch_size"), int):
            changes["lr_batch"] = baseline["batch_size"]  # the user's lr is meant for the user's batch
        out.append(Candidate(f"{key} {auto}", key, changes, f"{key} chosen by measurement here ({auto})"))
    return out
