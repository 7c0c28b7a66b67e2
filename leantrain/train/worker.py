"""A worker process of a launched run: ``python -m leantrain.train.worker SPEC.json`` (one per rank).

The experiment runner writes SPEC (the run's configuration, results folder and record fields) and starts
N of these through the elastic launcher; each finds its rank in torchrun's variables and trains.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from leantrain.config import RunConfig
from leantrain.errors import UsageError
from leantrain.fileio import write_json
from leantrain.parallel.launch import cores_available, run_local_workers
from leantrain.parallel.mpi import run_mpirun


def launch(config: RunConfig, out_dir: Path, *, resume: bool, quiet: bool, extra_run_fields: dict[str, Any]) -> int:
    """Train ``config`` on ``config.procs`` local workers; the record lands in ``out_dir`` as usual."""
    spec = out_dir / f".{config.run_name}.launch.json"
    write_json(spec, {"config": config.to_dict(), "out_dir": str(out_dir), "resume": resume, "quiet": quiet,
                      "extra_run_fields": extra_run_fields})
    args = ["-m", "leantrain.train.worker", str(spec)]
    try:
        if config.parallel == "mpi":
            return run_mpirun(config.procs or 1, args, cores_available())
        return run_local_workers(config.procs or 1, args)
    finally:
        spec.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    from leantrain.train.run import execute

    spec = json.loads(Path(argv[0]).read_text())
    try:
        execute(RunConfig.from_dict(spec["config"], where=argv[0]), out_dir=Path(spec["out_dir"]), resume=spec["resume"],
                quiet=spec["quiet"], extra_run_fields=spec["extra_run_fields"])
    except UsageError as e:
        print(f"leantrain: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
