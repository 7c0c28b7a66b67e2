"""A tiny checkpointed run that dies as told: ``python victim.py OUT MODE STEP``.

MODE kill: SIGKILL itself just before optimizer step STEP + 1 (checkpoints every 2 steps).
MODE kill-in-write: SIGKILL while writing the checkpoint of step STEP (even), after its temporary file is
written and fsynced but before the rename: the previous checkpoint must survive and the temporary be ignored.
"""
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import leantrain as lt  # noqa: E402
from leantrain import fileio  # noqa: E402
from leantrain.techniques import Technique  # noqa: E402
from tests.faults.helpers import tiny_data, tiny_model  # noqa: E402

OPTIONS = {"epochs": 3, "batch_size": 16, "lr": 5e-3, "device": "cpu", "seed": 0, "checkpoint_every": "2"}


class KillAtStep(Technique):
    name = "kill-at-step"

    def __init__(self, step):
        self.step = step

    def before_step(self, state):
        if state.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def kill_in_checkpoint_write(step):
    real_fsync, written = fileio._fsync_file, []

    def fsync_then_die(path):
        real_fsync(path)
        if path.suffix == ".ckpt":
            written.append(path)
            if len(written) == step // 2:
                os.kill(os.getpid(), signal.SIGKILL)

    fileio._fsync_file = fsync_then_die


def main(out, mode, step):
    torch.set_num_threads(1)
    techniques = [KillAtStep(step)] if mode == "kill" else []
    if mode == "kill-in-write":
        kill_in_checkpoint_write(step)
    lt.fit(tiny_model(), tiny_data(), techniques=techniques, checkpoint_dir=out, **OPTIONS)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
