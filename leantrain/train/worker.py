"""Runs that need worker processes: launched from here, and the worker's entry point.

``launch`` starts ``config.procs`` local workers (torchrun's elastic launcher, or mpirun for
``--parallel mpi``), each running ``python -m leantrain.train.worker SPEC.json``: they find their rank in
the launcher's variables and train. With ``procs = "auto"`` the layout is measured first (see layout.py)
and may turn out to be one process with every core, trained right here.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from leantrain import interrupts
from leantrain.config import RunConfig
from leantrain.errors import JobFailed, TrainingDiverged, UsageError
from leantrain.fileio import prepare_output_dir, write_json
from leantrain.parallel import failures
from leantrain.parallel.launch import WorkersFailed, cores_available, run_local_workers
from leantrain.parallel.mpirun import run_mpirun
from leantrain.parallel.strategy import strategy_for
from leantrain.train.preflight import remove_if_unused


def launch(config: RunConfig, out_dir: Path, *, resume: bool, quiet: bool, extra_run_fields: dict[str, Any],
           max_restarts: int = 0, force: bool = False, verbose: bool = False) -> int:
    """Train ``config`` on its local workers; the record lands in ``out_dir`` as usual. Returns 0, or raises
    JobFailed with the job's cause in one line (SIGTERM/Ctrl-C: Terminated/KeyboardInterrupt, once the workers
    have stopped)."""
    if config.procs == "auto":
        from leantrain.train import layout as layouts
        from leantrain.train.run import execute

        chosen = layouts.choose(config, say=(lambda text: None) if quiet else (lambda text: print(text, file=sys.stderr)))
        extra_run_fields = {**extra_run_fields, "layout": chosen.record()}
        if chosen.procs == 1:
            # One process at the global batch: the same training, so it keeps the name the user's settings gave it.
            single = config.replace(procs=None, parallel="none", batch_size=chosen.batch_size, threads=chosen.threads,
                                    name=config.run_name)
            execute(single, out_dir=out_dir, resume=resume, quiet=quiet, extra_run_fields=extra_run_fields, force=force)
            return 0
        config = config.replace(procs=chosen.procs, threads=chosen.threads, parallel=chosen.parallel)
    procs = int(config.procs or 1)
    made = not out_dir.exists()
    prepare_output_dir(out_dir)
    interrupts.watch_checkpoint(out_dir, config.run_name)
    spec = out_dir / f".{config.run_name}.launch.json"
    fields = {"config": config.to_dict(), "out_dir": str(out_dir), "quiet": quiet, "force": force,
              "extra_run_fields": extra_run_fields}
    trained = False
    try:
        for attempt in range(max_restarts + 1):
            # A restarted job resumes from the last checkpoint, as torch elastic's restarted workers do.
            write_json(spec, {**fields, "resume": resume or attempt > 0})
            try:
                _run_workers(config, procs, ["-m", "leantrain.train.worker", str(spec)], max_restarts, verbose)
                trained = True
                return 0
            except WorkersFailed as failed:
                # torch elastic restarts its workers itself; an mpirun job is relaunched here
                if strategy_for(config.parallel).launcher != "mpirun" or attempt == max_restarts or failed.status in (2, 3):
                    raise JobFailed(f"{failed}; {interrupts.checkpoint_note()}", failed.status) from None
                print(f"leantrain: {failed}; restarting the workers from the last checkpoint "  # --quiet too: a warning
                      f"({attempt + 1} of --max-restarts {max_restarts})", file=sys.stderr)
        raise AssertionError("unreachable")
    finally:
        spec.unlink(missing_ok=True)
        if made and not trained:  # the workers have gone: a bad input leaves no folder, as in one process
            remove_if_unused(out_dir, config.run_name)


def _run_workers(config: RunConfig, procs: int, args: list[str], max_restarts: int, verbose: bool) -> None:
    """One job of ``procs`` workers: under mpirun for ``--parallel mpi`` (restarts are relaunches, see launch),
    else torch elastic's launcher (which restarts the workers itself)."""
    if strategy_for(config.parallel).launcher == "mpirun":
        run_mpirun(procs, args, cores_available(), verbose=verbose)
    else:
        run_local_workers(procs, args, max_restarts=max_restarts, verbose=verbose)


def needs_launch(config: RunConfig, launched: bool) -> bool:
    """Whether this process must start workers for ``config`` (it is not itself one of them)."""
    if launched or config.procs is None:
        return False
    return config.procs == "auto" or int(config.procs) > 1 or config.parallel != "none"


def main(argv: list[str]) -> int:
    """A worker: train the launch file's run as this process's rank; every way out is an exit status, and a reason
    in one line (to the launcher that collects them, see parallel/failures.py). A rank whose collective failed
    ends the process at once (``exit_now``)."""
    interrupts.install()  # kept to the end: a signal while the process exits still ends it as 143/130
    rank = 0
    try:
        from leantrain.parallel.env import detect
        from leantrain.train.run import execute

        rank = detect().rank
        spec = json.loads(Path(argv[0]).read_text())
        interrupts.watch_checkpoint(Path(spec["out_dir"]), RunConfig.from_dict(spec["config"]).run_name)
        execute(RunConfig.from_dict(spec["config"], where=argv[0]), out_dir=Path(spec["out_dir"]), resume=spec["resume"],
                quiet=spec["quiet"], extra_run_fields=spec["extra_run_fields"], force=spec.get("force", False))
        return 0
    except UsageError as e:
        status = 3 if isinstance(e, TrainingDiverged) else 2
        failures.report(rank, str(e), status)
        return status
    except KeyboardInterrupt as stop:  # SIGTERM too: the launcher (or scheduler) that sent it says so once
        if rank == 0 and not failures.collected():
            print(interrupts.stopped_line(stop), file=sys.stderr)
        return interrupts.status(stop)
    except RuntimeError as e:
        # Ended here, inside the handler: released, the exception frees the broken process group, whose gloo
        # destructor can wait forever for its own thread (seen once in ten: a rank that never ended).
        if failures.timed_out(e):
            failures.report(rank, f"a collective waited longer than --dist-timeout for the other ranks, one of which "
                                  f"is hung or too slow ({_first_line(e)}); every rank is stopped", 1)
            exit_now(1)
        if failures.lost_peer(e):  # a consequence: the rank that died is the cause, and its launcher says so
            if not failures.collected():
                failures.report(rank, f"lost contact with another rank, which stopped or died ({_first_line(e)})", 1)
            exit_now(1)
        raise


def _first_line(error: BaseException) -> str:
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", text)  # gloo's "[.../unbound_buffer.cc:78] " source place
    return text if len(text) <= 160 else text[:157] + "..."


def exit_now(status: int) -> None:
    """End a failed worker at once: its process group may be broken, and tearing one down at interpreter exit can
    abort (SIGABRT from gloo's threads), which would replace the status and reason the worker gave."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    if code:
        exit_now(code)
    sys.exit(code)
