"""Launcher detection: each launcher's variables give the same answers (rank, world, local, rendezvous)."""
import pytest

from leantrain.errors import UsageError
from leantrain.parallel.env import detect, first_host


def test_no_launcher_is_one_process():
    world = detect({})
    assert (world.launcher, world.rank, world.world_size, world.launched) == ("none", 0, 1, False)


def test_torchrun_variables():
    world = detect({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "h0",
                    "MASTER_PORT": "1234", "TORCHELASTIC_RESTART_COUNT": "1"})
    assert (world.launcher, world.rank, world.world_size, world.local_rank, world.nodes) == ("torchrun", 3, 4, 1, 2)
    assert (world.master_addr, world.master_port, world.restart_count) == ("h0", 1234, 1)


def test_open_mpi_and_pmi_variables():
    ompi = detect({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                   "OMPI_COMM_WORLD_LOCAL_SIZE": "2"})
    assert (ompi.launcher, ompi.rank, ompi.world_size, ompi.local_rank, ompi.master_addr) == ("mpi", 1, 2, 1, None)
    pmi = detect({"PMI_RANK": "0", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "2"})
    assert (pmi.launcher, pmi.world_size, pmi.nodes) == ("mpi", 4, 2)


def test_slurm_variables_give_rank_and_a_master_from_the_node_list():
    world = detect({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NNODES": "2",
                    "SLURM_NODELIST": "gpu[007-008]", "SLURM_JOB_ID": "4242"})
    assert (world.launcher, world.rank, world.world_size, world.local_rank, world.local_world_size) == ("slurm", 5, 8, 1, 4)
    assert (world.master_addr, world.master_port) == ("gpu007", 10000 + 4242 % 20000)
    # salloc without srun sets job variables but is no launch
    assert detect({"SLURM_JOB_ID": "1", "SLURM_NNODES": "1"}).launcher == "none"


def test_torchrun_wins_inside_srun():
    world = detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (world.launcher, world.rank) == ("torchrun", 1)


@pytest.mark.parametrize("nodelist,host", [("n1", "n1"), ("a[3-5],b1", "a3"), ("c[10,12]", "c10"), ("x-1,y", "x-1")])
def test_first_host(nodelist, host):
    assert first_host(nodelist) == host


def test_a_rank_outside_the_world_is_refused():
    with pytest.raises(UsageError, match="rank 2 .* of 2"):
        detect({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
