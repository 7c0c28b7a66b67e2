"""``leantrain run FILE.toml --executor slurm``: one Slurm job per case, submitted through submitit.

A job trains its case's runs in the experiment's order, as a local run would (its recipes and seeds interleaved on one
node, so their timings stay comparable), and writes their records into the results folder, which must be one the
cluster's nodes share; this process waits for every job, then writes the report from the records, as a local run
does. ``--resume`` submits only the cases with a run whose record is missing (a job continues its interrupted runs
from their checkpoints). A job that fails is said in one line with its log; the others go on.

Requeued jobs resume: Slurm's requeue (``scontrol requeue``, preemption, a failed node) reruns the job, which then
continues from the checkpoints (``SLURM_RESTART_COUNT``); near ``--time``, submitit's signal (USR2) requeues it
too, up to three times. SIGTERM (scancel) ends a job's training as it ends a local one: its checkpoint is kept.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leantrain import interrupts
from leantrain.errors import JobFailed, UsageError
from leantrain.experiments.runner import Experiment, _finished, run_runs
from leantrain.parallel.env import NOT_A_LAUNCH, slurm_step

EXECUTORS = ("local", "slurm")
JOBS_FOLDER = "slurm"  # beside the records: submitit's files and each job's log (<job id>_0_log.err/.out)
DEFAULT_TIME_MIN = 60  # submitit needs a time limit to tell a timed-out job from a preempted one
INSTALL_HINT = "pip install 'leantrain[slurm]' (submitit)"
# Slurm job states after which a job without a result has failed (squeue -t all keeps them for MinJobAge).
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                   "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "GONE"})
RESULT_GRACE_S = 15.0  # a result written on another node may show on a shared file system a little after the job ends
TIME_FORMAT = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time(text: str) -> int:
    """Slurm's time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes, rounded up."""
    match = TIME_FORMAT.match(text.strip())
    if not match or text.strip() == "0":
        raise UsageError(f"--time {text!r} is not a Slurm time limit: minutes (90), HH:MM:SS (1:30:00) or D-HH:MM")
    days, first, second, third = match.groups()
    numbers = [int(first), *(int(n) for n in (second, third) if n is not None)]
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = (numbers + [0, 0])[:3]
        hours += 24 * int(days)
    elif len(numbers) == 3:
        hours, minutes, seconds = numbers
    elif len(numbers) == 2:  # MM:SS
        hours, (minutes, seconds) = 0, numbers
    else:
        hours, minutes, seconds = 0, numbers[0], 0
    return hours * 60 + minutes + (1 if seconds else 0)


def submitit_module() -> Any:
    try:
        import submitit
    except ImportError as e:
        raise UsageError(f"--executor slurm submits through submitit, which is not installed here ({e}); "
                         f"{INSTALL_HINT}") from None
    return submitit


def cases(experiment: Experiment) -> dict[str, Experiment]:
    """The experiment cut into its cases, each with its runs in the planned order."""
    labels = dict.fromkeys(planned.case for planned in experiment.runs)
    return {label: dataclasses.replace(experiment, runs=[p for p in experiment.runs if p.case == label])
            for label in labels}


class CaseJob:
    """What a job runs: one case's runs, here on the job's node (pickled by submitit, called in the job)."""

    def __call__(self, experiment: Experiment, out_dir: Path, resume: bool, quiet: bool, force: bool) -> list[str]:
        if int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:
            # Requeued: continue this attempt's runs from their checkpoints; its finished (even forced) records are final.
            resume, force = True, False
        # submitit's srun step is this one process, not a launch of ranks: each run is a local run here (a world of
        # one rank per run would bind the same job-derived port again for the next run).
        os.environ[NOT_A_LAUNCH] = slurm_step(os.environ)
        # SIGTERM (scancel, a requeue) unwinds the runs as it does a local one, the checkpoint kept; submitit's own
        # handlers come back for the process's exit.
        restore = interrupts.install()
        try:
            return [str(p) for p in run_runs(experiment, out_dir, resume=resume, quiet=quiet, force=force)]
        except (UsageError, JobFailed) as e:
            raise CaseFailed(str(e)) from None
        finally:
            restore()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's requeue near the time limit: the same call, which resumes (SLURM_RESTART_COUNT > 0)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


class CaseFailed(RuntimeError):
    """A case's run stopped for a reason leantrain names (a usage error, a diverged run, a failed launch)."""


@dataclass(frozen=True)
class SlurmExecutor:
    """One Slurm job per case; the jobs' settings as ``sbatch`` takes them."""

    partition: str | None = None
    time_min: int = DEFAULT_TIME_MIN
    cpus_per_task: int | None = None  # default: the case's largest procs, else 1
    poll_s: float = 1.0

    def run(self, experiment: Experiment, out_dir: Path, *, resume: bool, quiet: bool, force: bool) -> list[Path]:
        submitit = submitit_module()
        out_dir = out_dir.resolve()  # the jobs run elsewhere, from another folder
        every = cases(experiment)
        todo = {label: case for label, case in every.items()
                if force or not resume or not all(_finished(out_dir, p.config) for p in case.runs)}
        if resume and not quiet:
            print(f"leantrain: {len(every) - len(todo)} of {len(every)} cases are finished; submitting {len(todo)}",
                  file=sys.stderr)
        try:
            executor = submitit.SlurmExecutor(folder=out_dir / JOBS_FOLDER)
        except RuntimeError as e:  # no srun on PATH
            raise UsageError(f"--executor slurm needs Slurm's commands here (sbatch, srun, squeue): {e}") from None
        jobs: dict[str, Any] = {}
        try:
            for label, case in todo.items():
                executor.update_parameters(**self._parameters(experiment.name, label, case))
                try:
                    jobs[label] = executor.submit(CaseJob(), case, out_dir, resume, quiet, force)
                except (subprocess.CalledProcessError, OSError) as e:
                    raise UsageError(f"sbatch refused case {label!r}: {_sbatch_error(e)}") from None
                if not quiet:
                    print(f"leantrain: case {label}: Slurm job {jobs[label].job_id} ({len(case.runs)} runs; log: "
                          f"{jobs[label].paths.stderr})", file=sys.stderr, flush=True)
            failures = dict(self._wait(jobs, quiet))
        except KeyboardInterrupt as stop:
            _cancel(jobs)
            raise JobFailed(f"{'terminated (SIGTERM)' if isinstance(stop, interrupts.Terminated) else 'interrupted'}; "
                            f"cancelled the experiment's Slurm jobs ({', '.join(j.job_id for j in jobs.values()) or 'none'});"
                            f" their runs' last checkpoints are kept: run --resume --executor slurm continues them",
                            interrupts.status(stop)) from None
        if failures:
            for label, line in failures.items():
                print(f"leantrain: error: case {label}: {line}", file=sys.stderr)
            raise JobFailed(f"{len(failures)} of {len(todo)} Slurm jobs failed (cases {', '.join(failures)}); the "
                            "finished runs are kept, and run --resume --executor slurm resubmits the rest", 1)
        return [out_dir / f"{p.config.run_name}.json" for p in experiment.runs]

    def _parameters(self, experiment: str, label: str, case: Experiment) -> dict[str, Any]:
        procs = max((p.config.procs for p in case.runs if isinstance(p.config.procs, int)), default=1)
        parameters: dict[str, Any] = {"job_name": f"{experiment}-{label}", "time": self.time_min, "nodes": 1,
                                      "ntasks_per_node": 1, "cpus_per_task": self.cpus_per_task or procs}
        if self.partition:
            parameters["partition"] = self.partition
        return parameters

    def _wait(self, jobs: dict[str, Any], quiet: bool) -> Iterator[tuple[str, str]]:
        """Until every job has ended: (case, one line) for each that failed."""
        pending = dict(jobs)
        ended_at: dict[str, float] = {}
        while pending:
            states = _states([job.job_id for job in pending.values()])
            for label, job in list(pending.items()):
                if job.paths.result_pickle.exists():
                    del pending[label]
                    error = job.exception()
                    if error is not None:
                        yield label, f"Slurm job {job.job_id} failed: {_reason(error)}; log: {job.paths.stderr}"
                    elif not quiet:
                        print(f"leantrain: case {label}: Slurm job {job.job_id} finished", file=sys.stderr, flush=True)
                    continue
                state = states.get(job.job_id, "GONE")
                if state not in ENDED:
                    ended_at.pop(label, None)  # requeued: running again
                    continue
                if time.monotonic() - ended_at.setdefault(label, time.monotonic()) > RESULT_GRACE_S:
                    del pending[label]
                    yield label, (f"Slurm job {job.job_id} ended {state} before its runs finished (their last "
                                  f"checkpoints are kept); log: {job.paths.stderr}")
            if pending:
                time.sleep(self.poll_s)


def _states(job_ids: list[str]) -> dict[str, str]:
    """Each job's Slurm state, from squeue (which, unlike sacct, needs no accounting database); a job squeue has
    forgotten is left out."""
    done = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T", "-j", ",".join(job_ids)], capture_output=True,
                          text=True, timeout=60)
    if done.returncode != 0 and len(job_ids) > 1:  # one id squeue no longer knows fails the query: ask one by one
        return {k: v for job_id in job_ids for k, v in _states([job_id]).items()}
    return {job_id: state for job_id, _, state in (line.partition("|") for line in done.stdout.split()) if state}


def _reason(error: BaseException) -> str:
    """The job's exception in one line: its last traceback line, without the exception's module path."""
    text = str(error)
    trace = text.split("-" * 22)[1] if text.count("-" * 22) >= 2 else text  # submitit: the trace between two rules
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(error).__name__
    name, sep, message = last.partition(": ")
    if sep and re.fullmatch(r"[\w.]+", name):
        return message if name.endswith("CaseFailed") else f"{name.rsplit('.', 1)[-1]}: {message}"
    return last


def _sbatch_error(error: Exception) -> str:
    output = getattr(error, "output", None) or getattr(error, "stderr", None) or str(error)
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    lines = [line for line in str(output).strip().splitlines() if line.strip()]
    return lines[-1] if lines else str(error)


def _cancel(jobs: dict[str, Any]) -> None:
    for job in jobs.values():
        if not job.paths.result_pickle.exists():
            job.cancel(check=False)
