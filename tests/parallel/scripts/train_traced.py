"""One rank of a launched run (mpirun or torchrun) with its per-step parameters traced; rank 0 saves them.

    mpirun -n 2 python train_traced.py OUT.pt PARALLEL BATCH [die] [stop=N] [out_dir=D] [resume] [KEY=VALUE ...]
``die``: rank 1 exits abruptly at the second epoch's first step. ``stop=N``: every rank is interrupted before
step N (as a Ctrl-C reaching the whole job). ``out_dir``/``resume``: checkpoint there / resume from there.
``KEY=VALUE``: more settings (VALUE read as JSON where it parses, else as text).
"""
import json
import os
import sys
from pathlib import Path

import torch

from leantrain.config import RunConfig
from leantrain.techniques import Technique
from leantrain.train.run import execute
from tests.parallel.helpers import ParamTrace
from tests.parallel.test_ddp import BASE

out, parallel, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
flags = [a for a in sys.argv[4:] if "=" not in a]
options = dict(a.split("=", 1) for a in sys.argv[4:] if "=" in a)
stop_at = int(options.pop("stop", 0))
out_dir = Path(options["out_dir"]) if "out_dir" in options else None
options.pop("out_dir", None)


def _value(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


class Faults(Technique):
    name = "faults"

    def before_step(self, state):
        if "die" in flags and state.dist.rank == 1 and state.epoch == 1:
            os._exit(3)
        if stop_at and state.step == stop_at:
            raise KeyboardInterrupt


trace = ParamTrace()
config = RunConfig.from_dict({**BASE, "batch_size": batch, "parallel": parallel, "threads": 1, "dist_timeout": 60,
                              **{k: _value(v) for k, v in options.items()}})
try:
    record = execute(config, techniques=[trace, Faults()], quiet=True, out_dir=out_dir, resume="resume" in flags)
except KeyboardInterrupt:
    record = None
if (record is None or record["run"]["world_size"] > 1) and os.environ.get("OMPI_COMM_WORLD_RANK", "0") == "0":
    torch.save({"steps": trace.steps, "record": record}, out)
