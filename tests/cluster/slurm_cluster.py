#!/usr/bin/env python3
"""A single-node Slurm cluster for the tests: ``python3 tests/cluster/slurm_cluster.py up|down|status|install``.

Debian's ``slurmctld slurmd munge slurm-client`` (and ``libpmix-dev``, whose libpmix.so ``srun --mpi=pmix`` loads), as root,
with everything the cluster writes in one folder (``LEANTRAIN_SLURM_DIR``, default /tmp/leantrain-slurm): its own
munge key and socket, ``slurm.conf``, state, spool and logs. Nothing under /etc is read or changed; clients find the
cluster through ``SLURM_CONF`` (``up`` prints the line to export). The daemons' two ports are free ports taken at
bring-up, never fixed ones. Bring-up takes a few seconds (the packages, when they must be installed, ~30 s more).

``up`` is idempotent (a cluster already answering is kept) and fails in one line, with the log that says why;
``down`` stops the daemons it started (by their pids) and removes the folder. Standard library only: CI calls it
before the virtual environment exists.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# libpmix-dev: Debian's mpi/pmix plugin loads libpmix.so, which only the -dev package links (srun --mpi=pmix fails without)
PACKAGES = ("slurmctld", "slurmd", "munge", "slurm-client", "libpmix-dev")
PROGRAMS = ("slurmctld", "slurmd", "munged", "sinfo", "srun", "sbatch", "scancel", "scontrol", "squeue")
SBIN = ("/usr/sbin", "/sbin")  # slurmctld and munged live here, which a non-login PATH may lack
PARTITION = "debug"
UP_TIMEOUT_S = 45.0
KILL_WAIT_S = 30  # scancel: SIGTERM, then SIGKILL this long after (Slurm's default: a rank slow to unwind is not cut off)
CRED_EXPIRE_S = 5  # a requeued job waits this long (+1 s) before it starts again (Slurm: 120 s)


class ClusterUnavailable(Exception):
    """Why the cluster cannot run on this machine, in one line (tests skip with it)."""


@dataclass(frozen=True)
class Cluster:
    folder: Path

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    @property
    def state_file(self) -> Path:
        return self.folder / "cluster.json"

    @property
    def partition(self) -> str:
        return PARTITION

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment a client (srun, sbatch, ...) needs to reach this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), *SBIN])
        return env

    def log(self, name: str) -> Path:
        return self.folder / "log" / f"{name}.log"


def default_cluster() -> Cluster:
    return Cluster(Path(os.environ.get("LEANTRAIN_SLURM_DIR", "/tmp/leantrain-slurm")))


def _which(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path=os.pathsep.join(SBIN))


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if _which(p) is None]


def unavailable_reason() -> str | None:
    """Why this machine cannot run the cluster at all (None: it can, installing the packages if need be)."""
    if sys.platform != "linux":
        return f"a Slurm cluster for the tests needs Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "a Slurm cluster for the tests needs root (slurmd starts jobs as their user)"
    if missing_programs() and shutil.which("apt-get") is None:
        return f"Slurm is not installed ({', '.join(missing_programs())} missing) and there is no apt-get to install it"
    return None


def install() -> None:
    """apt-get install the packages (once: nothing is done when they are there)."""
    if not missing_programs() and _has_libpmix():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:  # a fresh machine's package lists may be missing or stale
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True)
        done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0 or missing_programs():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ClusterUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {last}")


def _has_libpmix() -> bool:
    return any(Path("/usr/lib").glob("*/pmix2/lib/libpmix.so"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _answers(cluster: Cluster) -> bool:
    """Whether slurmctld answers and the node takes jobs."""
    if not cluster.conf.exists():
        return False
    done = subprocess.run([_which("sinfo") or "sinfo", "-h", "-o", "%T"], env=cluster.env(), capture_output=True,
                          text=True, timeout=10)
    states = done.stdout.split()
    return done.returncode == 0 and bool(states) and all(s.rstrip("*") in ("idle", "mixed", "allocated") for s in states)


def is_up(cluster: Cluster) -> bool:
    try:
        state = json.loads(cluster.state_file.read_text())
    except (OSError, ValueError):
        return False
    return all(_alive(pid) for pid in state["pids"].values()) and _answers(cluster)


def _free_port() -> int:
    # The kernel's pick of a free port; the daemon binds it a moment later (a port another process takes in between
    # fails the bring-up with slurmctld's "Address already in use" in its log, and `up` tries again).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _slurm_conf(cluster: Cluster, node: str, cpus: int, ctld_port: int, slurmd_port: int) -> str:
    folder = cluster.folder
    return f"""\
# Written by tests/cluster/slurm_cluster.py: a single-node cluster for leantrain's tests.
ClusterName=leantrain-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.socket,cred_expire={CRED_EXPIRE_S}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool/%n
SlurmctldPidFile={folder}/run/slurmctld.pid
SlurmdPidFile={folder}/run/slurmd.pid
SlurmctldLogFile={cluster.log("slurmctld")}
SlurmdLogFile={cluster.log("slurmd")}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
KillWait={KILL_WAIT_S}
MailProg=/bin/true
MinJobAge=600
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


def _stop(cluster: Cluster) -> None:
    try:
        pids = json.loads(cluster.state_file.read_text())["pids"]
    except (OSError, ValueError, KeyError):
        pids = {}
    for pid in pids.values():  # the daemons this script started, by pid: never another cluster's
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids.values():
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _start(argv: list[str], log: Path) -> int:
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # outlives the test session that started it
    return process.pid


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def up(cluster: Cluster | None = None, *, allow_install: bool = True) -> Cluster:
    """Bring the cluster up (or keep the one already up); ClusterUnavailable says why it cannot."""
    cluster = cluster or default_cluster()
    why = unavailable_reason()
    if why:
        raise ClusterUnavailable(why)
    if is_up(cluster):
        return cluster
    if missing_programs():
        if not allow_install:
            raise ClusterUnavailable(f"Slurm is not installed ({', '.join(missing_programs())} missing): "
                                     f"apt-get install {' '.join(PACKAGES)}")
        install()
    last_error = ""
    for _ in range(2):  # a second try with other ports, should one have been taken in between
        try:
            _bring_up(cluster)
            return cluster
        except ClusterUnavailable as e:
            last_error = str(e)
    raise ClusterUnavailable(last_error)


def _bring_up(cluster: Cluster) -> None:
    _stop(cluster)
    shutil.rmtree(cluster.folder, ignore_errors=True)
    folder = cluster.folder
    for sub in ("munge", "state", "spool", "run", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(folder / "munge", 0o700)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    node = socket.gethostname().split(".")[0]
    cpus = len(os.sched_getaffinity(0))
    cluster.conf.write_text(_slurm_conf(cluster, node, cpus, _free_port(), _free_port()))
    munge_dir = folder / "munge"
    pids = {"munged": _start([_which("munged") or "munged", "--foreground", "--force", f"--key-file={key}",
                              f"--socket={munge_dir}/munge.socket", f"--pid-file={munge_dir}/munged.pid",
                              f"--log-file={cluster.log('munged')}", f"--seed-file={munge_dir}/munged.seed"],
                             folder / "log" / "munged.out")}
    cluster.state_file.write_text(json.dumps({"pids": pids}))
    _wait_for(lambda: (munge_dir / "munge.socket").exists(), 10, f"munged did not start: {_tail(cluster.log('munged'))}")
    conf = ["-f", str(cluster.conf)]
    pids["slurmctld"] = _start([_which("slurmctld") or "slurmctld", "-D", "-c", "-i", *conf], folder / "log" / "slurmctld.out")
    cluster.state_file.write_text(json.dumps({"pids": pids}))
    pids["slurmd"] = _start([_which("slurmd") or "slurmd", "-D", *conf], folder / "log" / "slurmd.out")
    cluster.state_file.write_text(json.dumps({"pids": pids, "conf": str(cluster.conf)}))

    def ready() -> bool:
        for name, pid in pids.items():
            if not _alive(pid):
                raise ClusterUnavailable(f"{name} stopped during bring-up: {_tail(cluster.log(name))} "
                                         f"(log: {cluster.log(name)})")
        return _answers(cluster)

    _wait_for(ready, UP_TIMEOUT_S, f"the node did not become idle in {UP_TIMEOUT_S:.0f}s: "
                                   f"{_tail(cluster.log('slurmctld'))} (logs: {folder / 'log'})")


def _wait_for(condition, timeout_s: float, message: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise ClusterUnavailable(message)
        time.sleep(0.2)


def down(cluster: Cluster | None = None) -> None:
    cluster = cluster or default_cluster()
    _stop(cluster)
    shutil.rmtree(cluster.folder, ignore_errors=True)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "status"
    cluster = default_cluster()
    try:
        if command == "up":
            start = time.monotonic()
            up(cluster)
            print(f"slurm cluster up in {time.monotonic() - start:.1f}s; export SLURM_CONF={cluster.conf}")
        elif command == "down":
            down(cluster)
            print("slurm cluster down")
        elif command == "install":
            why = unavailable_reason()
            if why:
                raise ClusterUnavailable(why)
            install()
            print("slurm installed")
        elif command == "status":
            print(f"up (SLURM_CONF={cluster.conf})" if is_up(cluster) else "down")
            return 0 if is_up(cluster) else 1
        else:
            print(f"usage: {sys.argv[0]} up|down|status|install (not {command!r})", file=sys.stderr)
            return 2
    except ClusterUnavailable as e:
        print(f"slurm cluster: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
