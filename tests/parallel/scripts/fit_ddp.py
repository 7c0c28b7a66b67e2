"""``lt.fit(..., parallel="ddp")`` inside a script that torchrun started, with a fault injected on request.

    python -m torch.distributed.run ... fit_ddp.py OUT_DIR FAULT EPOCH
FAULT: none | kill (rank 1 SIGKILLs itself once, at EPOCH's first step) | raise (rank 1 raises there) |
hang (rank 1 stops joining collectives there). Rank 0 saves the final weights to OUT_DIR/weights.pt.
"""
import os
import signal
import sys
import time
from pathlib import Path

import torch

import leantrain as lt
from leantrain import models

out, fault, at_epoch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])


class Fault(lt.Technique):
    name = "fault"

    def before_step(self, state):
        first_try = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if state.epoch != at_epoch or os.environ["RANK"] != "1" or not first_try:
            return
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "raise":
            raise RuntimeError("injected failure on rank 1")
        if fault == "hang":
            time.sleep(600)


torch.manual_seed(0)
data = lt.data.load("healthcare-sim:n=1280", seed=0)
model = models.build("mlp:hidden=32", data)
# A short timeout where a rank hangs (the test waits it out); elsewhere one that a loaded machine cannot overrun
# while rank 0 writes its record (and, uncached, measures the machine's matmul peaks) and the others wait.
lt.fit(model, data, epochs=3, batch_size=32, lr=3e-3, device="cpu", threads=1, parallel="ddp",
       dist_timeout=5 if fault == "hang" else 60, checkpoint_dir=out, techniques=[Fault()])
if os.environ["RANK"] == "0":
    torch.save(model.state_dict(), out / "weights.pt")
