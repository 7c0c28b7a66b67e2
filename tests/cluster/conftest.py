"""The single-node Slurm cluster, brought up once for the test session (slurm_cluster.py).

Under pytest-xdist each worker is a session of its own: they share the one cluster. A lock serialises bring-up, each
session registers itself, and the last one to leave takes the cluster down, if a test session brought it up (a
cluster a developer started by hand stays up). Where the cluster cannot run (not root, no apt-get to install Slurm),
the tests that need it skip with the reason in one line; with LEANTRAIN_REQUIRE_SLURM=1 (CI) they fail instead.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.cluster import slurm_cluster as sc


@contextmanager
def _locked(cluster: sc.Cluster) -> Iterator[Path]:
    lock = cluster.folder.with_name(cluster.folder.name + ".lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield cluster.folder.with_name(cluster.folder.name + ".sessions")
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _unavailable(reason: str) -> None:
    if os.environ.get("LEANTRAIN_REQUIRE_SLURM") == "1":
        pytest.fail(f"LEANTRAIN_REQUIRE_SLURM=1 but the Slurm cluster cannot run: {reason}", pytrace=False)
    pytest.skip(f"no Slurm cluster: {reason}")


@pytest.fixture(scope="session")
def slurm() -> Iterator[sc.Cluster]:
    """A running single-node cluster; its clients need ``slurm.env()`` (SLURM_CONF)."""
    cluster = sc.default_cluster()
    reason = sc.unavailable_reason()
    if reason:
        _unavailable(reason)
    with _locked(cluster) as sessions:
        try:
            if not sc.is_up(cluster):
                sc.up(cluster)
                (cluster.folder / "started-by-tests").touch()
        except sc.ClusterUnavailable as e:
            _unavailable(str(e))
        sessions.mkdir(exist_ok=True)
        (sessions / str(os.getpid())).touch()
    yield cluster
    with _locked(cluster) as sessions:
        (sessions / str(os.getpid())).unlink(missing_ok=True)
        for gone in [p for p in sessions.iterdir() if not (p.name.isdigit() and _alive(int(p.name)))]:
            gone.unlink(missing_ok=True)  # a session that was killed before its teardown
        others = list(sessions.iterdir())
        if not others and (cluster.folder / "started-by-tests").exists():
            sc.down(cluster)
