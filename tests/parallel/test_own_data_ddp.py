"""A user's streamed data under data parallelism (issue 16): each rank reads its own shard, and two ranks at
batch B take every step one process takes at batch 2B on the same data in memory."""
import os

import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

import leantrain as lt

from .helpers import ParamTrace, world_env


def _data(streamed):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(250, 6, generator=g)  # 200 training samples: none dropped on 2 ranks
    y = (x[:, 0] + x[:, 1] > 0).long()
    return lt.data.from_loader(TensorDataset(x, y), stream=True) if streamed else lt.data.from_tensors(x, y)


def _fit(streamed, batch_size, trace, **options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
    return lt.fit(model, _data(streamed), epochs=2, batch_size=batch_size, lr=0.01, device="cpu", threads=1,
                  techniques=[trace], **options)


def _worker(rank, folder):
    os.environ.update(world_env(rank, 2, folder / "rendezvous"))
    trace = ParamTrace()
    result = _fit(True, 16, trace, parallel="ddp", dist_timeout=30)
    torch.save({"steps": trace.steps, "samples": [e["train_samples"] for e in result.epochs]}, folder / f"rank{rank}.pt")


def test_two_ranks_on_a_streamed_dataset_equal_one_process_with_the_doubled_batch(tmp_path):
    mp.start_processes(_worker, args=(tmp_path,), nprocs=2, start_method="fork", join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    trace = ParamTrace()
    _fit(False, 32, trace)
    assert len(trace.steps) == len(ranks[0]["steps"]) == 14  # 200 training samples: 7 steps of 32 per epoch
    for reference, rank0, rank1 in zip(trace.steps, ranks[0]["steps"], ranks[1]["steps"]):
        assert torch.equal(rank0, rank1) and torch.allclose(reference, rank0, atol=1e-5)
    assert ranks[0]["samples"] == [200, 200]  # global samples: each rank read half
