"""--log files after a kill, a resume and a full disk: every step once, in order, no gap and no half line."""
import csv
import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from leantrain.errors import UsageError
from leantrain.train.checkpoint import load
from leantrain.train.loggers import StepLog, open_log
from leantrain.train.run_identity import resume_checkpoint
from tests.faults.helpers import cli, one_line_error, python_script

pytestmark = pytest.mark.timeout(90)
STEPS_PER_EPOCH = 4


def _state(step: int) -> SimpleNamespace:
    """What StepLog.step reads of a TrainState."""
    return SimpleNamespace(
        step=step, epoch=step // STEPS_PER_EPOCH, model=torch.nn.Linear(1, 1),
        plan=SimpleNamespace(holds_whole_model=False), optimizer=SimpleNamespace(param_groups=[{"lr": 0.1}]),
        precision=SimpleNamespace(loss_scale=lambda: None),
    )


def _log_steps(log: StepLog, first: int, last: int) -> None:
    """Steps ``first``..``last`` as the loop logs them, with an epoch row after every STEPS_PER_EPOCH-th."""
    for step in range(first, last + 1):
        log.step(_state(step - 1), torch.tensor(float(step)), 1, 8, None, 1)
        if step % STEPS_PER_EPOCH == 0:
            log.end_epoch({"epoch": step // STEPS_PER_EPOCH, "train_steps": STEPS_PER_EPOCH, "val_loss": 0.5})


def _open(folder: Path, resume_step: int | None = None) -> StepLog:
    return open_log(["csv", "jsonl"], folder, "r", is_main=True, world_size=1, append=resume_step is not None,
                    resume_step=resume_step)


def _jsonl(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "r.log.jsonl").read_text().splitlines()]  # every line parses


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _steps(folder: Path) -> tuple[list[int], list[int]]:
    """The step numbers of the JSON lines log and of the steps CSV."""
    return ([row["step"] for row in _jsonl(folder) if row["kind"] == "step"],
            [int(row["step"]) for row in _csv(folder / "r.steps.csv")])


def _epochs(folder: Path) -> tuple[list[int], list[int]]:
    return ([row["epoch"] for row in _jsonl(folder) if row["kind"] == "epoch"],
            [int(row["epoch"]) for row in _csv(folder / "r.epochs.csv")])


def _killed_writer(folder: Path, steps: int) -> None:
    """A child process logs ``steps`` steps, flushes (as before a checkpoint) and is killed with SIGKILL."""
    pid = os.fork()
    if pid == 0:
        try:
            log = _open(folder)
            _log_steps(log, 1, steps)
            log.flush()
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_flush_puts_every_pending_step_on_disk_before_a_kill(tmp_path):
    _killed_writer(tmp_path, 7)  # fewer than FLUSH_EVERY steps: only flush writes them
    assert _steps(tmp_path) == (list(range(1, 8)), list(range(1, 8)))
    assert _epochs(tmp_path) == ([1], [1])


@pytest.mark.parametrize("resume_step,epochs", [(6, [1]), (8, [1, 2]), (0, [])])
def test_a_resume_cuts_the_logs_back_to_the_checkpoint_step(tmp_path, resume_step, epochs):
    _killed_writer(tmp_path, 10)  # steps 9 and 10 and epoch 2's row (at 8) came after some checkpoints
    log = _open(tmp_path, resume_step)
    assert _steps(tmp_path) == (list(range(1, resume_step + 1)),) * 2
    assert _epochs(tmp_path) == (epochs, epochs)  # only epochs finished by the checkpoint
    _log_steps(log, resume_step + 1, 12)
    log.close()
    assert _steps(tmp_path) == (list(range(1, 13)),) * 2
    assert _epochs(tmp_path) == ([1, 2, 3],) * 2


def test_a_line_cut_short_by_a_kill_or_a_full_disk_is_dropped_not_joined(tmp_path):
    _killed_writer(tmp_path, 6)
    with (tmp_path / "r.log.jsonl").open("a") as f:
        f.write('{"kind": "step", "step": 7, "epo')
    with (tmp_path / "r.steps.csv").open("a") as f:
        f.write("7,2,0.12")  # as many cells as a whole row would have, had it not been cut
    with (tmp_path / "r.epochs.csv").open("a") as f:
        f.write("2,4,0.")
    log = _open(tmp_path, 6)
    _log_steps(log, 7, 8)
    log.close()
    assert _steps(tmp_path) == (list(range(1, 9)),) * 2
    assert _epochs(tmp_path) == ([1, 2], [1, 2])
    assert all(len(row) == len(_csv(tmp_path / "r.steps.csv")[0]) for row in _csv(tmp_path / "r.steps.csv"))


def test_a_log_an_older_version_appended_to_keeps_each_step_once(tmp_path):
    _killed_writer(tmp_path, 6)
    with (tmp_path / "r.log.jsonl").open("a") as f:  # a half line joined to a resumed run's repeat of step 5
        f.write('{"kind": "step", "st{"kind": "step", "step": 4}\n{"kind": "step", "step": 5}\n')
    _open(tmp_path, 5).close()
    assert _steps(tmp_path)[0] == [1, 2, 3, 4, 5]


def test_a_full_disk_while_logging_is_one_line_naming_the_log(tmp_path):
    (tmp_path / "r.log.jsonl").symlink_to("/dev/full")  # every write to it fails with ENOSPC
    result = cli("train", "--model", "mlp", "--data", "healthcare-sim:n=300", "--epochs", "1", "--quiet",
                 "--run-name", "r", "--log", "jsonl", "--out", str(tmp_path))
    assert result.returncode == 2
    assert f"no space left on the device writing {tmp_path / 'r.log.jsonl'}" in one_line_error(result.stderr)
    assert not (tmp_path / "r.json").exists()


def test_any_failed_write_is_one_line(tmp_path, monkeypatch):
    log = _open(tmp_path)
    _log_steps(log, 1, 2)

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(UsageError, match=r"cannot write .*r\.steps\.csv \(Input/output error\)"):
        log.flush()
    monkeypatch.undo()
    log.close()


KILL = """
import os, signal, sys
import leantrain.train.loggers as loggers
from leantrain.cli import main

loggers.FLUSH_EVERY = {flush_every}
step = loggers.StepLog.step

def step_or_die(self, state, *args):
    if state.step == {kill_at}:  # SIGKILL before step {kill_at} + 1 is logged
        os.kill(os.getpid(), signal.SIGKILL)
    step(self, state, *args)

loggers.StepLog.step = step_or_die
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize("flush_every,kill_at,cut_line", [
    (50, 31, False),  # rows after epoch 1 reach the disk only by the checkpoint's flush: else a gap
    (3, 11, True),  # rows 9-11 were written after checkpoint 8, and a line was cut short: else repeats
])
def test_a_run_killed_and_resumed_logs_each_step_once(tmp_path, flush_every, kill_at, cut_line):
    argv = ["train", "--model", "mlp", "--data", "healthcare-sim:n=2000", "--epochs", "2", "--batch-size", "64",
            "--log", "csv,jsonl", "--checkpoint-every", "4", "--threads", "1", "--run-name", "r", "--quiet",
            "--out", str(tmp_path)]
    killed = python_script(KILL.format(flush_every=flush_every, kill_at=kill_at, argv=argv))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    saved = load(resume_checkpoint(tmp_path, None))["step"]
    assert saved < kill_at
    if cut_line:
        with (tmp_path / "r.log.jsonl").open("a") as f:
            f.write('{"kind": "step", "step": 12, "epoch": 1, "lo')
    resumed = cli("train", "--resume", str(tmp_path), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((tmp_path / "r.json").read_text())
    steps = sum(epoch["train_steps"] for epoch in record["epochs"])
    assert _steps(tmp_path) == (list(range(1, steps + 1)),) * 2  # no gap, no repeat
    assert _epochs(tmp_path) == ([1, 2], [1, 2])


def test_tensorboard_hides_the_steps_after_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def tensorboard(resume_step):
        return open_log(["tensorboard"], tmp_path, "r", is_main=True, world_size=1,
                        append=resume_step is not None, resume_step=resume_step)

    log = tensorboard(None)
    _log_steps(log, 1, 10)
    log.close()
    log = tensorboard(6)
    _log_steps(log, 7, 12)
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard" / "r"))
    events.Reload()
    assert [e.step for e in events.Scalars("step/loss")] == list(range(1, 13))
    assert [e.value for e in events.Scalars("step/loss")] == list(range(1, 13))


def test_a_log_that_cannot_close_does_not_hide_why_the_run_stopped(tmp_path, monkeypatch):
    """A run stopped by Ctrl-C (or SIGTERM, or divergence) whose log then fails to close (a full disk) ends as it was
    stopped (130), not as the log's error (2): the first failure is the one reported."""
    import leantrain as lt
    from leantrain.train import loggers
    from tests.faults.helpers import StopAtStep, tiny_data, tiny_model

    def full(self: StepLog) -> None:
        raise UsageError(f"no space left on the device writing {tmp_path / 'r.log.jsonl'}")

    monkeypatch.setattr(loggers.StepLog, "close", full)
    with pytest.raises(KeyboardInterrupt):
        lt.fit(tiny_model(), tiny_data(), techniques=[StopAtStep(4)], checkpoint_dir=tmp_path, log="jsonl",
               epochs=2, batch_size=16, device="cpu")
