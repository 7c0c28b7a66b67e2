"""Command line: argument parsing only. Every UsageError becomes one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leantrain import interrupts
from leantrain.errors import JobFailed, TrainingDiverged, UsageError

if TYPE_CHECKING:
    from leantrain.config import RunConfig
    from leantrain.experiments.runner import Executor

DEFAULT_EXPERIMENT = Path("experiments/default.toml")


def main(argv: list[str] | None = None) -> int:
    restore_signals = interrupts.install()  # first: a signal during start-up is the same one line
    try:
        parser = build_parser()
        argv = list(sys.argv[1:] if argv is None else argv)
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, or a flag error already printed as one line
            return int(e.code or 0)
        return int(args.handler(args))
    except TrainingDiverged as e:
        print(f"leantrain: error: {_rank_prefix()}{e}", file=sys.stderr)
        return 3
    except UsageError as e:
        print(f"leantrain: error: {_rank_prefix()}{e}", file=sys.stderr)
        return 2
    except JobFailed as e:  # a job of workers: its cause, said once
        print(f"leantrain: error: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (interrupts.Terminated)
        print(interrupts.stopped_line(stop), file=sys.stderr)
        return interrupts.status(stop)
    finally:
        restore_signals()


def _rank_prefix() -> str:
    """Worker processes other than rank 0 name themselves, so N workers' messages can be told apart."""
    from leantrain.parallel.env import detect

    try:
        world = detect()
    except UsageError:
        return ""
    return f"[rank {world.rank}] " if world.rank else ""


class _Parser(argparse.ArgumentParser):
    """argparse's own errors (bad flag, bad int) are usage errors too: one line, exit 2, no usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"leantrain: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parse_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _folder(text: str) -> Path:
    """A folder argument; an empty one would silently become the current folder (``Path("")`` is ``.``)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty folder name; name a folder (. for the current one)")
    return Path(text)


def _flag(key: str) -> str:
    """The train flag of a config key (``name`` is ``--run-name``: ``--name`` would read as the model's)."""
    return "--run-name" if key == "name" else "--" + key.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:

    parser = _Parser(prog="leantrain", description="Measure which optimizations speed up training, and by how much.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train one run; write its JSON record into --out")
    _add_run_flags(train)
    train.add_argument("--out", type=_folder, default=Path("results/train"), help="results folder (default results/train)")
    train.add_argument("--resume", type=_folder, metavar="DIR", help="continue the interrupted run whose checkpoint is in DIR")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.add_argument("--force", action="store_true",
                       help="replace an existing result, or start over an interrupted run's checkpoint")
    train.add_argument("--max-restarts", type=int, default=0,
                       help="with --procs: restart the workers this many times after a failure; they resume from the last checkpoint")
    train.add_argument("--verbose", action="store_true",
                       help="with --procs: also show the launcher's own reports (torch elastic's, Open MPI's) of a failed job")
    train.set_defaults(handler=_train)

    run = commands.add_parser("run", help="run an experiment file (a matrix of runs) and write its report")
    run.add_argument("file", nargs="?", type=Path, default=DEFAULT_EXPERIMENT, help=f"default {DEFAULT_EXPERIMENT}")
    run.add_argument("--out", type=_folder, help="results folder (default results/<experiment name>)")
    run.add_argument("--resume", action="store_true", help="skip finished runs; continue interrupted ones")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument("--force", action="store_true", help="rerun and replace existing results")
    run.add_argument("--executor", choices=("local", "slurm"), default="local",
                     help="where the runs train: here, one after another (default), or one Slurm job per case "
                          "(submitit; the results folder must be shared with the nodes)")
    run.add_argument("--partition", help="with --executor slurm: the jobs' partition (default: the cluster's)")
    run.add_argument("--time", help="with --executor slurm: each job's time limit, minutes or [D-]HH:MM:SS (default 60)")
    run.add_argument("--cpus-per-task", type=int, metavar="N",
                     help="with --executor slurm: CPUs per job (default: the case's procs, else 1)")
    run.set_defaults(handler=_run)

    _add_advise(commands)
    _add_slurm_script(commands)

    report = commands.add_parser("report", help="rebuild summary.md and plots from the JSON records in DIR")
    report.add_argument("dir", type=_folder)
    report.add_argument("--csv", nargs="?", type=Path, const=True, default=None, metavar="FILE",
                        help="also write one tidy table, a row per run x epoch (default FILE: DIR/epochs.csv)")
    report.set_defaults(handler=_report)

    from leantrain.inference.commands import add_commands

    add_commands(commands)  # evaluate, predict

    listing = commands.add_parser("list", help="registered models, data sets and techniques")
    listing.set_defaults(handler=_list)
    return parser


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig setting (``--batch-size``), unset unless given."""
    from leantrain.config import config_options

    for option in config_options():
        parse = _parse_bool if option.base_type is bool else option.base_type
        bare: dict[str, Any] = {"nargs": "?", "const": True} if option.base_type is bool else {}  # --save-model: true
        parser.add_argument(_flag(option.name), dest=option.name, type=parse, default=None, choices=option.choices,
                            help=option.help, **bare)


def _given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The RunConfig settings given as flags (the others stay the config's defaults)."""
    from leantrain.config import config_options

    return {o.name: getattr(args, o.name) for o in config_options() if getattr(args, o.name) is not None}


def _add_advise(commands: Any) -> None:
    advise = commands.add_parser("advise", help="which techniques speed up your model here, by how much, at what "
                                 "cost: measured within a time budget; writes advice.md and the recipe to keep")
    _add_run_flags(advise)  # train's flags: the recipe you use now is the baseline
    advise.add_argument("--budget", default="15m", help="wall time for the whole advice: 15m, 90s, 1h30m (default 15m)")
    advise.add_argument("--tolerance", type=float, default=0.005,
                        help="the target is the baseline's final metric less this (default 0.005); --target sets "
                             "it instead")
    advise.add_argument("--out", type=_folder, default=Path("results/advise"),
                        help="folder for advice.md, the plot, the recipe files and each run's record "
                             "(default results/advise)")
    advise.add_argument("--techniques", metavar="NAME[,NAME...]",
                        help="try only these: precision, optimizer, batch_size, loader, schedule, compile, "
                             "checkpointing, accumulation, complexity, threads, processes (default: every one)")
    advise.add_argument("--force", action="store_true", help="replace an advice already in --out")
    advise.add_argument("--quiet", action="store_true", help="no progress output")
    advise.set_defaults(handler=_advise)


def _advise(args: argparse.Namespace) -> int:
    from leantrain.advice.api import advise, summary_lines

    given = _given_settings(args)
    model, data = given.pop("model", "mlp"), given.pop("data", "imagenet-sim")
    result = advise(model, data, budget=args.budget, baseline=given, out=args.out, target=given.get("target"),
                    tolerance=args.tolerance, techniques=args.techniques, force=args.force, quiet=args.quiet)
    print("\n".join(summary_lines(result)))
    return 0


def _add_slurm_script(commands: Any) -> None:

    script = commands.add_parser("slurm-script", help="write a Slurm batch script that trains one run (train's flags) "
                                 "with srun; sbatch it")
    _add_run_flags(script)  # train's run flags, as train takes them
    script.add_argument("--out", type=_folder, default=Path("results/train"),
                        help="results folder, shared with the nodes (default results/train; made now)")
    job = script.add_argument_group("the job (#SBATCH lines)")
    job.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    job.add_argument("--ntasks-per-node", type=int, default=1, help="ranks per node (default 1)")
    job.add_argument("--cpus-per-task", type=int, help="CPUs per rank; the run's --threads unless given")
    job.add_argument("--time", help="time limit: minutes or [D-]HH:MM:SS (default: the partition's)")
    job.add_argument("--partition", help="partition (default: the cluster's)")
    job.add_argument("--account", help="account to charge")
    job.add_argument("--gpus-per-node", type=int, help="GPUs per node")
    job.add_argument("--job-name", help="job name (default: the run's name)")
    job.add_argument("--requeue", action="store_true", help="let Slurm requeue the job (node failure, preemption)")
    job.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                     help="any other sbatch option, as written (--sbatch=--mem=8G); repeatable")
    script.add_argument("--script", type=Path, metavar="FILE", help="write the script here (default: standard output)")
    script.set_defaults(handler=_slurm_script)


def _slurm_script(args: argparse.Namespace) -> int:
    from leantrain.config import RunConfig
    from leantrain.experiments.slurm_script import JobSettings, job_script
    from leantrain.fileio import prepare_output_dir

    given = _given_settings(args)
    if args.cpus_per_task is not None and "threads" not in given:
        given["threads"] = args.cpus_per_task  # Slurm's CPUs for each rank are the rank's threads
    config = RunConfig.from_dict(given, where="command line")
    train_args = [text for key, value in given.items()
                  for text in (_flag(key), str(value).lower() if isinstance(value, bool) else str(value))]
    job = JobSettings(nodes=args.nodes, ntasks_per_node=args.ntasks_per_node, cpus_per_task=args.cpus_per_task,
                      time=args.time, partition=args.partition, account=args.account, gpus_per_node=args.gpus_per_node,
                      job_name=args.job_name, requeue=args.requeue, extra=tuple(args.sbatch))
    text = job_script(config, train_args, args.out, job, script_name=str(args.script or "job.sh"))
    prepare_output_dir(args.out)  # Slurm opens the job's output file there before anything runs
    if args.script is None:
        sys.stdout.write(text)
        return 0
    from leantrain.fileio import write_atomic

    write_atomic(args.script, text)
    args.script.chmod(0o755)
    print(f"wrote {args.script}: sbatch {args.script} trains {config.run_name} (record: "
          f"{args.out.resolve() / (config.run_name + '.json')}); sbatch {args.script} --resume continues it")
    return 0


def _train(args: argparse.Namespace) -> int:
    import json

    from leantrain.config import RunConfig
    from leantrain.parallel.env import detect
    from leantrain.train.run import execute
    from leantrain.train.run_identity import FinishedRecord
    from leantrain.train.worker import launch, needs_launch

    given = _given_settings(args)
    world = detect()
    if args.resume:
        # Launched ranks leave the finished check to rank 0's run, which holds the lock (several checks would collide).
        resumed = _resumed_config(args.resume, given, settle=not (world.launched or args.force))
        if resumed is None:
            return 0  # finished: said in one line, nothing written
        config, out_dir = resumed, args.resume
    else:
        config = RunConfig.from_dict(given, where="command line")
        out_dir = args.out
    interrupts.watch_checkpoint(out_dir, config.run_name)  # for the line a signal ends the run with
    if needs_launch(config, world.launched):
        launch(config, out_dir, resume=bool(args.resume), quiet=args.quiet, extra_run_fields={},
               max_restarts=args.max_restarts, force=args.force, verbose=args.verbose)
        result = out_dir / f"{config.run_name}.json"
        if result.is_file():
            _print_result(config.run_name, json.loads(result.read_text()), result)
        return 0
    record = execute(config, out_dir=out_dir, resume=bool(args.resume), quiet=args.quiet, force=args.force)
    if world.rank == 0 and not isinstance(record, FinishedRecord):  # a finished run's line is said already
        _print_result(config.run_name, record, out_dir / (config.run_name + ".json"))
    return 0


def _resumed_config(folder: Path, given: dict[str, Any], *, settle: bool) -> RunConfig | None:
    """The settings of the run ``train --resume DIR [--run-name NAME]`` continues, from its checkpoint; None when
    ``settle`` finds that run finished (said in one line; a stale checkpoint beside its record removed)."""
    from leantrain.config import RunConfig
    from leantrain.train.run_identity import checkpoint_run, resume_checkpoint, settle_finished
    from leantrain.train.training_state import read_checkpoint

    run_name = given.pop("name", None)  # picks one of several interrupted runs in the folder
    if given:
        flags = ", ".join(_flag(k) for k in given)
        raise UsageError(f"--resume continues with the run's saved settings (only --run-name may be given, to "
                         f"pick the run); drop {flags}")
    if settle:
        finished = settle_finished(folder, run_name or checkpoint_run(resume_checkpoint(folder, None)))
        if finished is not None:
            print(f"leantrain: {finished.message()}", file=sys.stderr)
            return None
    path = resume_checkpoint(folder, run_name)
    return RunConfig.from_dict(read_checkpoint(path)["config"], where=str(path))


def _print_result(run_name: str, record: dict, path: Path) -> None:
    summary, metric = record["summary"], record["run"]["metric"]
    print(f"{run_name}: final {metric} {summary[f'final_{metric}']:.4f}, "
          f"{summary['train_time_s']:.2f}s training; record: {path}")


def _run(args: argparse.Namespace) -> int:
    from leantrain.experiments.runner import load_experiment, run_experiment

    executor = _executor(args)
    experiment = load_experiment(args.file)
    out_dir = args.out or Path("results") / experiment.name
    run_experiment(experiment, out_dir, resume=args.resume, quiet=args.quiet, force=args.force, executor=executor)
    print(f"results: {out_dir}/ (summary.md, plots, one JSON per run)")
    return 0


def _executor(args: argparse.Namespace) -> Executor | None:
    """``--executor``: None runs here; slurm, the Slurm executor with its job settings (only it takes them)."""
    if args.executor == "local":
        given = [flag for flag, value in (("--partition", args.partition), ("--time", args.time),
                                          ("--cpus-per-task", args.cpus_per_task)) if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} set the Slurm jobs of --executor slurm; add it, or drop them")
        return None
    from leantrain.experiments.executors import DEFAULT_TIME_MIN, SlurmExecutor, parse_time

    if args.cpus_per_task is not None and args.cpus_per_task < 1:
        raise UsageError(f"--cpus-per-task must be a positive integer, got {args.cpus_per_task}")
    return SlurmExecutor(partition=args.partition, time_min=parse_time(args.time) if args.time else DEFAULT_TIME_MIN,
                         cpus_per_task=args.cpus_per_task)


def _report(args: argparse.Namespace) -> int:
    from leantrain.experiments.report import write_report
    from leantrain.experiments.results import load_runs
    from leantrain.experiments.tidy import write_csv

    runs = load_runs(args.dir)  # read once: a malformed record is one warning, not one per output
    print(f"wrote {write_report(args.dir, runs)}")
    if args.csv is not None:
        path = args.dir / "epochs.csv" if args.csv is True else args.csv
        print(f"wrote {write_csv(runs, path)}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from leantrain.data import DATASETS
    from leantrain.models import MODELS
    from leantrain.models.thirdparty import SOURCES
    from leantrain.parallel.strategy import describe_modes
    from leantrain.techniques.registry import techniques

    third_party = [(f"{name}:...", f"{source.form}; pip install 'leantrain[{source.extra}]'") for name, source in SOURCES.items()]
    for title, rows in (
        ("models", [(e.name, e.summary) for e in MODELS] + third_party),
        ("data sets", [(e.name, e.summary) for e in DATASETS]),
        ("techniques", [(t.name, f"{t.summary} (keys: {', '.join(o.name for o in t.options)})") for t in techniques()]),
        ("parallel modes (--parallel)", describe_modes()),
    ):
        print(f"{title}:")
        width = max(len(name) for name, _ in rows)
        for name, summary in rows:
            print(f"  {name:<{width}}  {summary}")
    return 0
