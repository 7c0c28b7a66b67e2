"""Runs that need worker processes: launched from here, and the worker's entry point.

``launch`` starts ``config.procs`` local workers (torchrun's elastic launcher, or mpirun for
``--parallel mpi``), each running ``python -m leantrain.train.worker SPEC.json``: they find their rank in
the launcher's variables and train. With ``procs = "auto"`` the layout is measured first (see layout.py)
and may turn out to be one process with every core, trained right here.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from leantrain.config import RunConfig
from leantrain.errors import UsageError
from leantrain.fileio import prepare_output_dir, write_json
from leantrain.parallel.launch import cores_available, run_local_workers
from leantrain.parallel.mpi import run_mpirun


def launch(config: RunConfig, out_dir: Path, *, resume: bool, quiet: bool, extra_run_fields: dict[str, Any],
           max_restarts: int = 0, force: bool = False) -> int:
    """Train ``config`` on its local workers; the record lands in ``out_dir`` as usual. Returns the exit status."""
    if config.procs == "auto":
        from leantrain.train import layout as layouts
        from leantrain.train.run import execute

        chosen = layouts.choose(config, say=(lambda text: None) if quiet else (lambda text: print(text, file=sys.stderr)))
        extra_run_fields = {**extra_run_fields, "layout": chosen.record()}
        if chosen.procs == 1:
            single = config.replace(procs=None, parallel="none", batch_size=chosen.batch_size, threads=chosen.threads)
            execute(single, out_dir=out_dir, resume=resume, quiet=quiet, extra_run_fields=extra_run_fields, force=force)
            return 0
        config = config.replace(procs=chosen.procs, threads=chosen.threads)
    procs = int(config.procs or 1)
    prepare_output_dir(out_dir)
    spec = out_dir / f".{config.run_name}.launch.json"
    write_json(spec, {"config": config.to_dict(), "out_dir": str(out_dir), "resume": resume, "quiet": quiet, "force": force,
                      "extra_run_fields": extra_run_fields})
    args = ["-m", "leantrain.train.worker", str(spec)]
    try:
        if config.parallel == "mpi":
            return run_mpirun(procs, args, cores_available())
        return run_local_workers(procs, args, max_restarts=max_restarts)
    finally:
        spec.unlink(missing_ok=True)


def needs_launch(config: RunConfig, launched: bool) -> bool:
    """Whether this process must start workers for ``config`` (it is not itself one of them)."""
    if launched or config.procs is None:
        return False
    return config.procs == "auto" or int(config.procs) > 1 or config.parallel != "none"


def main(argv: list[str]) -> int:
    from leantrain.train.run import execute

    spec = json.loads(Path(argv[0]).read_text())
    try:
        execute(RunConfig.from_dict(spec["config"], where=argv[0]), out_dir=Path(spec["out_dir"]), resume=spec["resume"],
                quiet=spec["quiet"], extra_run_fields=spec["extra_run_fields"], force=spec.get("force", False))
    except UsageError as e:
        print(f"leantrain: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
