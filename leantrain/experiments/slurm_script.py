"""``leantrain slurm-script``: one training run as a Slurm batch script, for ``sbatch``.

The script starts the ranks with ``srun`` (``srun --mpi=pmix`` for ``--parallel mpi``), runs the Python that wrote it
in the folder it was written in, and says where the record lands. It also continues: ``sbatch JOB.sh --resume``
(after ``scancel`` or a time limit: leantrain turns Slurm's SIGTERM into exit 143 with the last checkpoint kept), and a
requeued job (``scontrol requeue``, preemption, ``--requeue`` after a node failure) resumes by itself
(``SLURM_RESTART_COUNT``).
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from leantrain.config import RunConfig
from leantrain.errors import UsageError


@dataclass(frozen=True)
class JobSettings:
    """What ``#SBATCH`` lines say: the job's shape and place (None: the cluster's default)."""

    nodes: int = 1
    ntasks_per_node: int = 1
    cpus_per_task: int | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    gpus_per_node: int | None = None
    job_name: str | None = None
    requeue: bool = False
    extra: tuple[str, ...] = ()  # further sbatch options, one each ("--mem=8G")

    @property
    def ranks(self) -> int:
        return self.nodes * self.ntasks_per_node

    def check(self, config: RunConfig) -> None:
        for flag, value in (("--nodes", self.nodes), ("--ntasks-per-node", self.ntasks_per_node),
                            ("--cpus-per-task", self.cpus_per_task), ("--gpus-per-node", self.gpus_per_node)):
            if value is not None and value < 1:
                raise UsageError(f"{flag} must be a positive integer, got {value}")
        if config.procs is not None:
            raise UsageError(f"--procs {config.procs}: under Slurm, srun starts the ranks; give --ntasks-per-node "
                             "(and --nodes) instead")
        if self.ranks > 1 and config.parallel == "none":
            raise UsageError(f"--nodes {self.nodes} x --ntasks-per-node {self.ntasks_per_node} starts {self.ranks} "
                             "ranks, which train apart without a parallel mode: add --parallel ddp (or mpi, fsdp, ...)")
        for option in self.extra:
            if not option.startswith("--") or "\n" in option:
                raise UsageError(f"--sbatch {option!r}: give one sbatch option as it is written, e.g. --sbatch=--mem=8G")


def job_script(config: RunConfig, train_args: list[str], out_dir: Path, job: JobSettings, *,
               python: str = sys.executable, workdir: Path | None = None, script_name: str = "job.sh") -> str:
    """The batch script: ``#SBATCH`` lines, then ``srun`` of ``leantrain train`` (or of its ``--resume``)."""
    job.check(config)
    out_dir, workdir = out_dir.resolve(), (workdir or Path.cwd()).resolve()
    run = config.run_name
    srun = "srun --mpi=pmix" if config.parallel == "mpi" else "srun"  # Open MPI 5 joins srun's ranks through PMIx only
    options = [f"--job-name={job.job_name or run}", f"--nodes={job.nodes}", f"--ntasks-per-node={job.ntasks_per_node}"]
    options += [f"--{name}={value}" for name, value in (("cpus-per-task", job.cpus_per_task), ("time", job.time),
                                                        ("partition", job.partition), ("account", job.account),
                                                        ("gpus-per-node", job.gpus_per_node)) if value is not None]
    options += [f"--chdir={workdir}", f"--output={out_dir}/{run}.slurm-%j.out", "--open-mode=append"]
    options += ["--requeue"] if job.requeue else []
    options += list(job.extra)
    train = " ".join(shlex.quote(arg) for arg in train_args)
    q = shlex.quote
    return f"""#!/bin/bash
# Written by `leantrain slurm-script`: one leantrain run as a Slurm job.
#   sbatch {script_name}            trains; the record lands in {out_dir}/{run}.json
#   sbatch {script_name} --resume   continues from the checkpoint a cancelled or timed-out job kept
# scancel or the time limit: every rank gets SIGTERM and exits 143, the last checkpoint kept. A requeued job
# (scontrol requeue, preemption, or --requeue after a node failure) continues from it by itself.
{chr(10).join(f"#SBATCH {option}" for option in options)}
set -uo pipefail
out={q(str(out_dir))}
run={q(run)}
leantrain=({q(python)} -m leantrain)
case "${{1:-}}" in
  "") resume=0 ;;
  --resume) resume=1 ;;
  *) echo "usage: sbatch $0 [--resume]" >&2; exit 2 ;;
esac
if [[ "${{SLURM_RESTART_COUNT:-0}}" -gt 0 ]]; then resume=1; fi
# What there is to resume: the checkpoint (an ensemble's, one per member), or the record of a run already finished.
started=0
for kept in "$out/$run.ckpt" "$out/$run".member*.ckpt "$out/$run.json"; do
  if [[ -e "$kept" ]]; then started=1; fi
done
if (( resume && started )); then
  exec {srun} "${{leantrain[@]}}" train --resume "$out" --run-name "$run"
fi
exec {srun} "${{leantrain[@]}}" train {train} --out "$out"
"""
