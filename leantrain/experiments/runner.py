"""An experiment file is a matrix of runs: cases x recipes x seeds. Parse and validate it all, then run it.

    [experiment]  name, description, baseline = "<recipe>", seeds = [0, 1, 2],
                  target = <number> | "baseline-final", target_tolerance = 0.005
    [defaults]    RunConfig fields for every run
    [[cases]]     one table per case: RunConfig fields (model, data, epochs, ...) and an optional label
    [recipes.X]   RunConfig fields that make recipe X (they override the case's); optional
                  cases = ["label", ...] limits the recipe to those cases;
                  requires = "cuda" marks a recipe that needs a GPU: where there is none, its runs are
                  listed in the summary as "not available on this machine", never silently dropped

Every run's configuration is validated before the output folder is created, so a typo in the last
recipe never leaves a half-written results folder behind.
"""
from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeGuard

from leantrain import interrupts
from leantrain.config import RunConfig
from leantrain.errors import JobFailed, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXPERIMENT_KEYS = {"name", "description", "baseline", "seeds", "target", "target_tolerance"}
TOP_LEVEL_KEYS = {"experiment", "defaults", "cases", "recipes"}


@dataclass(frozen=True)
class PlannedRun:
    case: str
    recipe: str
    seed: int
    config: RunConfig


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    baseline: str | None
    seeds: list[int]
    target: float | str | None
    target_tolerance: float
    runs: list[PlannedRun]
    source: str
    unavailable: tuple[tuple[str, str, str], ...] = ()  # (case, recipe, why) of runs this machine cannot do

    @property
    def settings(self) -> dict[str, Any]:
        """What the report needs to know about the experiment, stored in every run's JSON."""
        return {
            "name": self.name, "description": self.description, "baseline": self.baseline,
            "target": self.target, "target_tolerance": self.target_tolerance, "source": self.source,
            "unavailable": [{"case": c, "recipe": r, "why": why} for c, r, why in self.unavailable],
        }


def load_experiment(path: Path) -> Experiment:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"experiment file {path} does not exist") from None
    except OSError as e:
        raise UsageError(f"experiment file {path} cannot be read ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: malformed TOML ({e})") from None
    return parse_experiment(raw, str(path))


def parse_experiment(raw: dict[str, Any], where: str) -> Experiment:
    if not raw:
        raise UsageError(f"{where}: the experiment file is empty; see experiments/default.toml for the shape")
    _only_keys(raw, TOP_LEVEL_KEYS, where)
    head = _table(raw, "experiment", where)
    _only_keys(head, EXPERIMENT_KEYS, f"{where} [experiment]")
    name = head.get("name") or Path(where).stem
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise UsageError(f"{where} [experiment]: name must be a plain folder name, got {name!r}")
    if not isinstance(head.get("description", ""), str):
        raise UsageError(f"{where} [experiment]: description must be a string")
    seeds = head.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise UsageError(f"{where} [experiment]: seeds must be a non-empty list of integers, got {seeds!r}")
    target = head.get("target")
    if not (target is None or target == "baseline-final" or (_is_number(target) and math.isfinite(target))):
        raise UsageError(f"{where} [experiment]: target must be a number or \"baseline-final\", got {target!r}")
    tolerance = head.get("target_tolerance", 0.005)
    if not _is_number(tolerance) or not 0 <= tolerance < math.inf:  # NaN fails every comparison
        raise UsageError(f"{where} [experiment]: target_tolerance must be a number >= 0, got {tolerance!r}")

    defaults = _table(raw, "defaults", where)
    recipes = _table(raw, "recipes", where) or {"default": {}}
    cases = raw.get("cases", [{}])
    if not isinstance(cases, list) or not all(isinstance(c, dict) for c in cases):
        raise UsageError(f"{where}: cases must be an array of tables ([[cases]])")
    baseline = head.get("baseline")
    if baseline is not None and baseline not in recipes:
        raise UsageError(f"{where} [experiment]: baseline {baseline!r} is not a recipe; recipes: {', '.join(recipes)}")
    if target == "baseline-final" and baseline is None:
        raise UsageError(f"{where} [experiment]: target = \"baseline-final\" needs a baseline recipe")

    runs = []
    unavailable: list[tuple[str, str, str]] = []
    labels = set()
    for case in cases:
        case = dict(case)
        label = str(case.pop("label", "") or _case_label({**defaults, **case}))
        if label in labels:
            raise UsageError(f"{where}: two cases are both labelled {label!r}; give them distinct labels")
        labels.add(label)
        for recipe, fields in recipes.items():
            if not isinstance(fields, dict):
                raise UsageError(f"{where}: [recipes.{recipe}] must be a table")
            fields = dict(fields)
            only = fields.pop("cases", None)  # a recipe may apply to some cases only (e.g. an MLP-only technique)
            if only is not None and (not isinstance(only, list) or not all(isinstance(c, str) for c in only)):
                raise UsageError(f"{where}: [recipes.{recipe}] cases must be a list of case labels, got {only!r}")
            if only is not None and label not in only:
                continue
            requires = fields.pop("requires", None)
            if requires not in (None, "cuda"):
                raise UsageError(f"{where}: [recipes.{recipe}] requires must be \"cuda\" (or absent), got {requires!r}")
            why = _missing(requires)
            for seed in seeds:
                values = {**defaults, **case, **fields, "seed": seed, "name": f"{label}-{recipe}-s{seed}"}
                if _is_number(target):
                    values["target"] = float(target)
                context = f"{where} (case {label!r}, recipe {recipe!r})"
                if why:  # still check every other value, on a device this machine has
                    RunConfig.from_dict({**values, "device": "cpu"}, where=context)
                    unavailable.append((label, recipe, why))
                    continue
                runs.append(PlannedRun(label, recipe, seed, RunConfig.from_dict(values, where=context)))
    for recipe, fields in recipes.items():
        unknown = sorted(set(fields.get("cases", [])) - labels) if isinstance(fields, dict) else []
        if unknown:
            raise UsageError(f"{where}: [recipes.{recipe}] cases names unknown case(s) {', '.join(unknown)}; "
                             f"cases: {', '.join(sorted(labels))}")
    if not runs:
        raise UsageError(f"{where}: no runs (no cases, or every recipe limited to other cases)")
    return Experiment(name, head.get("description", ""), baseline, seeds, target, float(tolerance), runs, where,
                      tuple(dict.fromkeys(unavailable)))


def _missing(requires: str | None) -> str | None:
    """Why this machine cannot run a recipe that requires something, or None."""
    if requires == "cuda":
        import torch

        return None if torch.cuda.is_available() else "not available on this machine (no CUDA device)"
    return None


def _case_label(values: dict[str, Any]) -> str:
    data = str(values.get("data", RunConfig.data)).split(":")[0]
    model = str(values.get("model", RunConfig.model)).split(":")[0]
    return f"{data}-{model}"


def _table(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise UsageError(f"{where}: [{key}] must be a table")
    return value


def _only_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise UsageError(f"{where}: unknown key {key!r}; allowed: {', '.join(sorted(allowed))}")


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Executor(Protocol):
    """Where an experiment's runs train (``--executor``): here, one after another (``run_runs``), or elsewhere,
    such as one Slurm job per case (executors.py); either way the records land in ``out_dir``."""

    def run(self, experiment: Experiment, out_dir: Path, *, resume: bool, quiet: bool, force: bool) -> list[Path]: ...


def run_experiment(
    experiment: Experiment, out_dir: Path, *, resume: bool = False, quiet: bool = False, force: bool = False,
    executor: Executor | None = None,
) -> list[Path]:
    """Train every planned run (skipping finished ones made with the same settings when resuming), here or by
    ``executor``, then rebuild the report. Without ``force``, an existing result is never replaced (see run_identity)."""
    from leantrain.experiments.report import write_report
    from leantrain.fileio import prepare_output_dir
    from leantrain.train.run_identity import check_existing, inside

    preflight(experiment)
    for planned in experiment.runs:  # before any run trains: never stop halfway on a result already there
        check_existing(inside(out_dir, f"{planned.config.run_name}.json"), None, resume=resume, force=force)
    prepare_output_dir(out_dir)
    train = executor.run if executor is not None else run_runs
    written = train(experiment, out_dir, resume=resume, quiet=quiet, force=force)
    write_report(out_dir)
    return written


def run_runs(experiment: Experiment, out_dir: Path, *, resume: bool, quiet: bool, force: bool) -> list[Path]:
    """Train the planned runs here, in their order (a case's recipes and seeds interleaved as planned); the paths of
    their records."""
    from leantrain.tuning import decided_once

    with decided_once():  # one recipe's seeds train one configuration: each auto setting is decided once
        return _run_each(experiment, out_dir, resume=resume, quiet=quiet, force=force)


def _run_each(experiment: Experiment, out_dir: Path, *, resume: bool, quiet: bool, force: bool) -> list[Path]:
    from leantrain.train.run import execute
    from leantrain.train.run_identity import inside
    from leantrain.train.worker import launch, needs_launch

    written = []
    datasets = DataSets(experiment.runs)
    for number, planned in enumerate(experiment.runs, 1):
        config = planned.config
        result_path = inside(out_dir, f"{config.run_name}.json")
        if resume and not force and _finished(out_dir, config):
            datasets.skip(planned)
            written.append(result_path)
            continue
        if not quiet:
            print(f"[{number}/{len(experiment.runs)}] {config.run_name}", file=sys.stderr, flush=True)
        fields = {"experiment": experiment.settings, "case": planned.case, "recipe": planned.recipe}
        if needs_launch(config, launched=False):
            datasets.skip(planned)  # the workers load their own
            try:
                launch(config, out_dir, resume=resume, quiet=quiet, extra_run_fields=fields, force=force)
            except JobFailed as failed:
                raise JobFailed(f"{config.run_name}: {failed}; the runs before it are kept, and run --resume "
                                "continues from here", failed.status) from None
        else:
            interrupts.watch_checkpoint(out_dir, config.run_name)
            execute(config, dataset=datasets.take(planned), out_dir=out_dir, resume=resume, quiet=quiet,
                    extra_run_fields=fields, force=force)
        written.append(result_path)
    return written


def _finished(out_dir: Path, config: RunConfig) -> bool:
    """Whether ``run --resume`` skips this run: its record is final (under the run's lock; a stale checkpoint a kill
    left beside it removed, and said). Never retrained over; a malformed record is left to the report, which names
    it in one warning line and leaves it out."""
    from leantrain.experiments.results import readable_record
    from leantrain.train.run_identity import check_record_settings, settle_finished

    finished = settle_finished(out_dir, config.run_name)
    if finished is None:
        return False
    if readable_record(finished.path):
        check_record_settings(finished.path, config.to_dict())
    if finished.removed:
        print(f"leantrain: {config.run_name} is finished ({finished.path}): skipped; {finished.removed_note}",
              file=sys.stderr)
    return True


class DataSets:
    """Each run's data set, loaded when a run first needs it and let go after the last run that uses it, so an
    experiment holds one case's data sets (its seeds) at a time, never every case's."""

    def __init__(self, runs: list[PlannedRun]):
        self._uses = Counter(_data_key(planned) for planned in runs)
        self._held: dict[tuple[str, int], Any] = {}

    def take(self, planned: PlannedRun) -> Any:
        from leantrain import data as data_sets

        key = _data_key(planned)
        dataset = self._held.get(key)
        if dataset is None:
            dataset = data_sets.load(key[0], seed=key[1])
        self._held[key] = dataset
        self.skip(planned)
        return dataset

    def skip(self, planned: PlannedRun) -> None:
        """A run that needs no data set from here (finished, or launched as workers): one use fewer."""
        key = _data_key(planned)
        self._uses[key] -= 1
        if self._uses[key] <= 0:
            self._held.pop(key, None)


def _data_key(planned: PlannedRun) -> tuple[str, int]:
    return planned.config.data, planned.config.seed


def preflight(experiment: Experiment) -> None:
    """Build every data set and every model before anything is written, so that a value only a builder can
    judge (a model that does not fit its data, a missing file, a run that cannot fit in memory) fails before
    the first run. One data set is held at a time (with its first seed: seeds change values, not shapes)."""
    from leantrain import data as data_sets
    from leantrain import models
    from leantrain.config import resolve_device
    from leantrain.techniques.registry import check_model
    from leantrain.train.adapters import with_output_key
    from leantrain.train.memory import check_memory
    from leantrain.train.preflight import dry_forward

    for planned in experiment.runs:
        config = planned.config
        if config.parallel != "none" and config.procs is None:
            raise UsageError(f"{experiment.source} (case {planned.case!r}, recipe {planned.recipe!r}): parallel "
                             f"{config.parallel} needs procs = N, the number of local workers to launch")
    for data_spec in dict.fromkeys(planned.config.data for planned in experiment.runs):
        runs = [planned for planned in experiment.runs if planned.config.data == data_spec]
        dataset = data_sets.load(data_spec, seed=runs[0].config.seed)
        for model_spec in dict.fromkeys(planned.config.model for planned in runs):
            same_model = [planned for planned in runs if planned.config.model == model_spec]
            where = f"{experiment.source} (case {same_model[0].case!r}, recipe {same_model[0].recipe!r})"
            try:
                model = models.build(model_spec, dataset)
                keyed = with_output_key(dataset, same_model[0].config.output_key)  # a dict or tuple output's tensor
                dry_forward(model, keyed, same_model[0].config)
                for planned in same_model:  # a technique that cannot work on this model (no blocks to checkpoint)
                    where = f"{experiment.source} (case {planned.case!r}, recipe {planned.recipe!r})"
                    check_model(planned.config, model)
                for planned in _memory_cases(same_model):
                    config = planned.config
                    where = f"{experiment.source} (case {planned.case!r}, recipe {planned.recipe!r})"
                    device = resolve_device(config.device)
                    processes = config.procs if isinstance(config.procs, int) and device.type == "cpu" else 1
                    check_memory(model, keyed, config, device, processes)
            except UsageError as e:
                raise UsageError(f"{where}: {e}") from None
            del model, keyed  # the keyed view holds the data set too
        del dataset  # before the next data set is loaded


def _memory_cases(runs: list[PlannedRun]) -> list[PlannedRun]:
    """One run per distinct setting that changes the memory estimate, among runs that check it."""
    distinct: dict[tuple[Any, ...], PlannedRun] = {}
    for planned in runs:
        if planned.config.memory_check:
            config = planned.config
            distinct.setdefault((config.batch_size, config.optimizer, config.precision, config.device, config.procs),
                                planned)
    return list(distinct.values())
