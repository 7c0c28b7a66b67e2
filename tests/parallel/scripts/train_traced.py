"""One rank of a launched run (mpirun or torchrun) with its per-step parameters traced; rank 0 saves them.

    mpirun -n 2 python train_traced.py OUT.pt PARALLEL BATCH [die]
``die``: rank 1 exits abruptly at the second epoch's first step.
"""
import os
import sys

import torch

from leantrain.config import RunConfig
from leantrain.techniques import Technique
from leantrain.train.run import execute
from tests.parallel.helpers import ParamTrace
from tests.parallel.test_ddp import BASE

out, parallel, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
fault = sys.argv[4] if len(sys.argv) > 4 else "none"


class Die(Technique):
    name = "die"

    def before_step(self, state):
        if fault == "die" and state.dist.rank == 1 and state.epoch == 1:
            os._exit(3)


trace = ParamTrace()
config = RunConfig.from_dict({**BASE, "batch_size": batch, "parallel": parallel, "threads": 1, "dist_timeout": 10})
record = execute(config, techniques=[trace, Die()], quiet=True)
if record["run"]["world_size"] > 1 and torch.distributed.is_available() and os.environ.get("OMPI_COMM_WORLD_RANK", "0") == "0":
    torch.save({"steps": trace.steps, "record": record}, out)
