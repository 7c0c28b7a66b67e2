"""``lt.advise`` and ``leantrain advise``: the arguments checked at the edge, the advice made in a staging folder and
moved into place whole, so a failure leaves nothing half-written."""
from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from leantrain.advice.advisor import DEFAULT_TOLERANCE, AdviseRequest, Advisor, Findings
from leantrain.advice.budget import Budget, parse_budget, render_seconds
from leantrain.config import RunConfig
from leantrain.data.dataset import Dataset
from leantrain.errors import UsageError

DEFAULT_BUDGET = "15m"
DEFAULT_OUT = Path("results/advise")


@dataclass(frozen=True)
class AdviceResult:
    """What ``advise`` returns: the findings (table rows, recommendation) and where the files are."""

    findings: Findings
    folder: Path
    recommended: dict[str, Any] | None  # the recommended recipe's full settings; None: keep your recipe

    @property
    def advice_md(self) -> Path:
        return self.folder / "advice.md"


def advise(model: str | Callable[[], nn.Module], data: str | Dataset, *, budget: str | float = DEFAULT_BUDGET,
           baseline: dict[str, Any] | None = None, out: str | Path = DEFAULT_OUT, target: float | None = None,
           tolerance: float = DEFAULT_TOLERANCE, techniques: str | list[str] | None = None, force: bool = False,
           quiet: bool = False, clock: Callable[[], float] | None = None) -> AdviceResult:
    """Which techniques speed up ``model`` on ``data`` on this machine, measured within ``budget``.

    ``model``: a name as on the command line (``"mlp:hidden=256"``, ``"my_pkg.models:Net"``, ``"timm:resnet18"``) or
    a function returning a fresh model (called once per run, seeded); ``data``: a name or a ``leantrain.data``
    data set. ``baseline``: your recipe's settings (``batch_size``, ``lr``, ``optimizer``, ``epochs``, ... as
    ``lt.fit`` takes them). ``techniques``: try only these (``"precision,compile"``; ``leantrain advise --help``
    lists them), else every one. Writes ``advice.md``, ``advice.json``, the plot, the recipe files and each run's record
    into ``out``; returns an ``AdviceResult``. Bad arguments raise ``UsageError`` in one line, before anything is written.
    """
    seconds = parse_budget(budget)
    only = _techniques(techniques)
    settings = _baseline(model, data, baseline or {})
    folder = Path(out)
    _check_out(folder, force)
    stage = folder.with_name(f"{folder.name}.partial-{os.getpid()}")  # this process's own: two advices never mix
    (stage / "runs").mkdir(parents=True)
    say = (lambda line: None) if quiet else (lambda line: print(f"leantrain advise: {line}", file=sys.stderr, flush=True))
    request = AdviseRequest(settings, Budget(seconds, clock) if clock else Budget(seconds), stage / "runs",
                            target=target, tolerance=tolerance, model_factory=model if callable(model) else None,
                            dataset=data if isinstance(data, Dataset) else None, only=only, say=say)
    try:
        findings = Advisor(request).run()
        recommended = _write(stage, findings, settings)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if folder.exists():
        shutil.rmtree(folder)
    stage.rename(folder)
    return AdviceResult(findings, folder, recommended)


def _baseline(model: Any, data: Any, given: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(given, dict):
        raise UsageError(f"baseline must be a dict of settings such as dict(batch_size=64, lr=1e-3), got {given!r}")
    if isinstance(model, str):
        spec = {"model": model}
    elif callable(model):
        spec = {"model": "mlp"}  # RunConfig wants a registered name; the function builds the model each run
    else:
        raise UsageError(f"model must be a name (\"mlp\", \"my_pkg.models:Net\") or a function returning a fresh "
                         f"model, got {type(model).__name__}: advise trains it many times, each from its start")
    if isinstance(data, str):
        spec["data"] = data
    elif not isinstance(data, Dataset):
        raise UsageError(f"data must be a name (\"csv:path=F,target=COL\") or a leantrain.data data set, got "
                         f"{type(data).__name__}")
    for key in ("model", "data"):
        if key in given:
            raise UsageError(f"baseline: give {key} as advise's own argument, not in the baseline")
    return RunConfig.from_dict({**given, **spec}, where="baseline").validated("baseline").to_dict()


def _techniques(given: str | list[str] | None) -> tuple[str, ...]:
    from leantrain.advice.candidates import GENERATORS
    from leantrain.advice.screen import AUTO_SETTINGS

    if given is None:
        return ()
    names = [n.strip() for n in (given.split(",") if isinstance(given, str) else given)]
    known = sorted({*GENERATORS, *AUTO_SETTINGS})
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UsageError(f"techniques {', '.join(unknown) or repr(given)}: not one advise tries; choose from "
                         f"{', '.join(known)}")
    return tuple(names)


def _check_out(folder: Path, force: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file; name a folder")
    if (folder / "advice.md").exists() and not force:
        raise UsageError(f"{folder} already holds an advice ({folder / 'advice.md'}); --force replaces it, or give "
                         f"another --out")
    if folder.exists() and any(folder.iterdir()) and not (folder / "advice.md").exists():
        raise UsageError(f"{folder} is not empty and holds no advice; give a new or empty --out folder")


def _write(folder: Path, findings: Findings, baseline: dict[str, Any]) -> dict[str, Any] | None:
    from leantrain.advice import report
    from leantrain.advice.recipe import write_recipe

    recommended_row = findings.advice.recommended
    recommended = None
    if recommended_row is not None:
        recommended = {**baseline, **report.resolved_changes(findings, recommended_row.recipe)}
    recipe = write_recipe(folder, baseline, recommended or baseline, checkpointed=_wrapped(findings))
    env: dict[str, Any] = next((m.record["env"] for m in findings.measurements if m.record is not None), {})
    report.write(folder, findings, env, recipe.markdown, baseline)
    return recommended


def _wrapped(findings: Findings) -> list[str] | None:
    """The modules the recommended recipe's runs checkpointed, so the plain script wraps the same ones."""
    row = findings.advice.recommended
    records = [m.record for m in (row.measurements if row else []) if m.record is not None and m.record["epochs"]]
    return records[0]["epochs"][-1].get("checkpointed_modules") if records else None


def summary_lines(result: AdviceResult) -> list[str]:
    """What the terminal shows: the table, the recommendation, where the files are."""
    from leantrain.advice import report

    findings = result.findings
    return [*report.table(findings), "", report.recommendation(findings),
            f"budget {render_seconds(findings.budget_s)}, spent {render_seconds(findings.spent_s)}; "
            f"advice: {result.advice_md} (recipe.toml, train_plain.py, recipe.patch beside it)"]
