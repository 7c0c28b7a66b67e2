"""A finished record is final: ``--resume`` never replaces it (F1, F3), a stale checkpoint beside it is removed, the lock
is taken before the checkpoint is read, and a renamed checkpoint is refused by every entry point (F4)."""
import json
import shutil
from contextlib import ExitStack
from pathlib import Path

import pytest

import leantrain as lt
from leantrain.config import RunConfig
from leantrain.parallel.dist import Dist
from leantrain.train import checkpoint, preflight
from leantrain.train.preflight import REFUSED, run_files
from leantrain.train.run import execute
from leantrain.train.run_identity import FinishedRecord, RunLocked, run_lock
from leantrain.train.training_state import TrainingCheckpoint, read_checkpoint
from tests.faults.helpers import cli, one_line_error, tiny_data, tiny_model

pytestmark = pytest.mark.timeout(90)
SETTINGS = {"model": "mlp:hidden=8", "data": "healthcare-sim:n=300", "epochs": 2, "batch_size": 16}
TINY = ["--model", "mlp:hidden=8", "--data", "healthcare-sim:n=300", "--epochs", "2", "--batch-size", "16", "--quiet"]
EXPERIMENT = """
[experiment]
name = "e"
[defaults]
model = "mlp:hidden=8"
data = "healthcare-sim:n=300"
epochs = 2
batch_size = 16
[[cases]]
label = "c"
"""
FIT = {"epochs": 2, "batch_size": 16, "device": "cpu", "checkpoint_every": "2"}


def _save_then(error, monkeypatch):
    """``checkpoint.save`` writes its checkpoint, then raises ``error`` (a kill just after the first checkpoint)."""
    real_save = checkpoint.save

    def save_then_raise(path, payload):
        real_save(path, payload)
        raise error

    monkeypatch.setattr(checkpoint, "save", save_then_raise)


def _interrupt(monkeypatch, folder, run_name, *flags):
    """``folder/<run_name>.ckpt``: a ``leantrain train`` interrupted just after its first checkpoint."""
    _save_then(KeyboardInterrupt, monkeypatch)
    result = cli("train", *TINY, "--checkpoint-every", "2", "--run-name", run_name, "--out", str(folder), *flags)
    assert result.returncode == 130, result.stderr
    monkeypatch.undo()
    return folder / f"{run_name}{checkpoint.SUFFIX}"


def _interrupt_removal(self, state):
    raise KeyboardInterrupt


def _killed_after_the_record(monkeypatch, *argv):
    """``leantrain ARGV`` killed just after its record was written, before its checkpoint went (F3's kill -9)."""
    monkeypatch.setattr(TrainingCheckpoint, "remove", _interrupt_removal)
    assert cli(*argv).returncode == 130
    monkeypatch.undo()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.endswith(".lock")}


def _finished_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    """An experiment's folder whose one run was killed just after its record: the record and a stale checkpoint."""
    exp, out = tmp_path / "exp.toml", tmp_path / "out"
    exp.write_text(EXPERIMENT)
    _killed_after_the_record(monkeypatch, "run", str(exp), "--out", str(out), "--quiet")
    (record,) = out.glob("*.json")
    assert (out / f"{record.stem}{checkpoint.SUFFIX}").exists()
    return exp, out, record


class _FinishOriginalOnRead:
    """The original run, still holding the lock, finishes (writes its record, removes its checkpoint, lets the lock
    go) the moment anyone reads its checkpoint: the F1 interleaving, made deterministic."""

    def __init__(self, monkeypatch, folder: Path, run_name: str):
        self.folder, self.run_name, self.reads = folder, run_name, 0
        self.held = ExitStack()
        self.held.enter_context(run_lock(folder, run_name))
        self.record = folder / f"{run_name}.json"
        real_read = TrainingCheckpoint.read

        def read(ckpt):
            saved = real_read(ckpt)
            self.reads += 1
            self.finish()
            return saved

        monkeypatch.setattr(TrainingCheckpoint, "read", read)

    def finish(self) -> None:
        if not self.record.exists():
            self.record.write_text(json.dumps({"the": "original's record"}))
            (self.folder / f"{self.run_name}{checkpoint.SUFFIX}").unlink()
        self.held.close()


def test_a_resume_while_the_original_runs_fails_at_once_and_never_replaces_its_record(tmp_path, monkeypatch):
    """F1: the resume took the checkpoint before the lock; the original finished; the resume replaced its record."""
    _interrupt(monkeypatch, tmp_path, "a")
    original = _FinishOriginalOnRead(monkeypatch, tmp_path, "a")
    result = cli("train", "--resume", str(tmp_path))
    assert result.returncode == 2 and "being written by another process" in one_line_error(result.stderr)
    assert original.reads == 0  # refused before its checkpoint was read
    original.finish()
    before = _files(tmp_path)
    again = cli("train", "--resume", str(tmp_path), "--run-name", "a")
    assert again.returncode == 0 and again.stdout == ""
    assert f"run a in {tmp_path} is finished ({tmp_path / 'a.json'}); nothing to resume" in _finished_line(again.stderr)
    assert _files(tmp_path) == before


def test_a_run_takes_its_lock_before_it_reads_its_checkpoint(tmp_path, monkeypatch):
    """The same race one level down (the experiment runner, fit and launched workers call execute, not the CLI)."""
    _interrupt(monkeypatch, tmp_path, "a")
    original = _FinishOriginalOnRead(monkeypatch, tmp_path, "a")
    with pytest.raises(RunLocked):
        execute(RunConfig(**SETTINGS, name="a", checkpoint_every="2"), out_dir=tmp_path, resume=True, quiet=True)
    assert original.reads == 0
    original.finish()
    record = execute(RunConfig(**SETTINGS, name="a", checkpoint_every="2"), out_dir=tmp_path, resume=True, quiet=True)
    assert isinstance(record, FinishedRecord) and record == {"the": "original's record"}


def test_resuming_a_finished_run_says_so_and_writes_nothing(tmp_path, capsys):
    assert cli("train", *TINY, "--run-name", "a", "--out", str(tmp_path)).returncode == 0
    before = _files(tmp_path)
    result = cli("train", "--resume", str(tmp_path), "--run-name", "a")
    line = _finished_line(result.stderr)
    assert result.returncode == 0 and line.startswith("leantrain: run a in") and "removed" not in line
    assert "drop --resume and add --force" in line and _files(tmp_path) == before


def test_train_resume_leaves_an_experiments_record_and_removes_the_stale_checkpoint(experiment):
    """F3: train --resume DIR rewrote the finished record, dropping its experiment, case and recipe."""
    _, out, record = experiment
    before = record.read_bytes()
    result = cli("train", "--resume", str(out))
    line = _finished_line(result.stderr)
    assert result.returncode == 0 and "is finished" in line
    assert f"removed the stale checkpoint {record.stem}{checkpoint.SUFFIX} beside it" in line
    assert record.read_bytes() == before and not list(out.glob(f"*{checkpoint.SUFFIX}"))
    assert {"experiment", "case", "recipe"} <= set(json.loads(before)["run"])


def test_run_resume_skips_the_finished_case_and_removes_its_stale_checkpoint(experiment):
    exp, out, record = experiment
    before = record.read_bytes()
    result = cli("run", str(exp), "--out", str(out), "--resume", "--quiet")
    assert result.returncode == 0, result.stderr
    assert f"removed the stale checkpoint {record.stem}{checkpoint.SUFFIX}" in result.stderr
    assert record.read_bytes() == before and not list(out.glob(f"*{checkpoint.SUFFIX}"))


def test_fit_resume_of_a_finished_run_raises_in_one_line_and_removes_a_stale_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(TrainingCheckpoint, "remove", _interrupt_removal)
    with pytest.raises(KeyboardInterrupt):
        lt.fit(tiny_model(), tiny_data(), checkpoint_dir=tmp_path, **FIT)
    monkeypatch.undo()
    (record,) = tmp_path.glob("*.json")
    before = record.read_bytes()
    with pytest.raises(lt.UsageError) as finished:
        lt.fit(tiny_model(), tiny_data(), checkpoint_dir=tmp_path, resume=True, **FIT)
    message = str(finished.value)
    assert "\n" not in message and f"run {record.stem} in {tmp_path} is finished" in message
    assert "removed the stale checkpoint" in message and "force=True" in message
    assert record.read_bytes() == before and not list(tmp_path.glob(f"*{checkpoint.SUFFIX}"))


def test_a_forced_retraining_interrupted_over_a_record_resumes(tmp_path, monkeypatch):
    """Its checkpoint is newer work than the record, not a stale one: --resume continues it (and then replaces)."""
    assert cli("train", *TINY, "--run-name", "a", "--out", str(tmp_path)).returncode == 0
    old = (tmp_path / "a.json").read_bytes()
    ckpt = _interrupt(monkeypatch, tmp_path, "a", "--force")
    result = cli("train", "--resume", str(tmp_path))
    assert result.returncode == 0 and "a: final" in result.stdout, result.stderr
    assert not ckpt.exists() and (tmp_path / "a.json").read_bytes() != old


def test_train_resume_of_an_interrupted_experiment_run_keeps_its_experiment_fields(tmp_path, monkeypatch):
    exp, out = tmp_path / "exp.toml", tmp_path / "out"
    exp.write_text(EXPERIMENT.replace("batch_size = 16", "batch_size = 16\ncheckpoint_every = \"2\""))
    _save_then(KeyboardInterrupt, monkeypatch)
    assert cli("run", str(exp), "--out", str(out), "--quiet").returncode == 130
    monkeypatch.undo()
    assert cli("train", "--resume", str(out), "--quiet").returncode == 0
    (record,) = out.glob("*.json")
    run = json.loads(record.read_text())["run"]
    assert run["case"] == "c" and run["recipe"] == "default" and run["experiment"]["name"] == "e"


def test_fit_resume_refuses_a_renamed_checkpoint_naming_both(tmp_path, monkeypatch):
    """F4: fit(resume=True) trained run b from run a's checkpoint, renamed to b's."""
    _save_then(KeyboardInterrupt, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        lt.fit(tiny_model(), tiny_data(), checkpoint_dir=tmp_path, name="a", **FIT)
    monkeypatch.undo()
    renamed = (tmp_path / "a.ckpt").rename(tmp_path / "b.ckpt")
    with pytest.raises(lt.UsageError) as refused:
        lt.fit(tiny_model(), tiny_data(), checkpoint_dir=tmp_path, name="b", resume=True, **FIT)
    assert str(refused.value) == (f"checkpoint {renamed} holds run a (the name in its saved settings), not b: "
                                  "rename it back to a.ckpt")
    assert not list(tmp_path.glob("*.json"))


def test_run_resume_refuses_a_renamed_checkpoint_naming_both(tmp_path, monkeypatch):
    exp, out = tmp_path / "exp.toml", tmp_path / "out"
    # Two recipes alike but for a setting that changes no result: the other's checkpoint would resume "fine".
    exp.write_text(EXPERIMENT + 'checkpoint_every = "2"\n[recipes.a]\n[recipes.b]\nmemory_check = false\n')
    _save_then(KeyboardInterrupt, monkeypatch)
    assert cli("run", str(exp), "--out", str(out), "--quiet").returncode == 130
    monkeypatch.undo()
    renamed = (out / "c-a-s0.ckpt").rename(out / "c-b-s0.ckpt")
    result = cli("run", str(exp), "--out", str(out), "--resume", "--quiet")
    assert result.returncode == 2
    assert f"checkpoint {renamed} holds run c-a-s0" in one_line_error(result.stderr)
    assert not (out / "c-b-s0.json").exists()


def test_an_ensemble_members_checkpoint_reads_and_a_renamed_one_is_refused(tmp_path, monkeypatch):
    ckpt = _interrupt(monkeypatch, tmp_path, "a")
    member = shutil.copy(ckpt, tmp_path / "a.member1.ckpt")
    assert read_checkpoint(Path(member))["config"]["name"] == "a"
    other = shutil.copy(ckpt, tmp_path / "b.member1.ckpt")
    with pytest.raises(lt.UsageError, match=r"holds run a .*not b: rename it back to a\.member1\.ckpt"):
        read_checkpoint(Path(other))


class _Ranks(Dist):
    """Rank ``rank`` of two, whose broadcast hands back what rank 0 sent (``sent``), and records what it sent."""

    def __init__(self, rank: int, sent=None):
        super().__init__()
        self._rank, self.sent, self.broadcasts = rank, sent, []

    @property
    def is_main(self) -> bool:
        return self._rank == 0

    def broadcast(self, value):
        self.broadcasts.append(value)
        return value if self._rank == 0 else self.sent


def test_only_rank_0_touches_the_runs_files_and_every_rank_learns_its_verdict(tmp_path, monkeypatch):
    _killed_after_the_record(monkeypatch, "train", *TINY, "--run-name", "a", "--out", str(tmp_path))
    before = _files(tmp_path)
    other = _Ranks(1, sent=None)
    with run_files(tmp_path, "a", other, resume=True, force=False) as found:
        assert found is None and _files(tmp_path) == before  # rank 1 never looks: rank 0 said "train"
    rank0 = _Ranks(0)
    with run_files(tmp_path, "a", rank0, resume=True, force=False) as found:
        assert isinstance(found, FinishedRecord) and rank0.broadcasts == [found]
    assert not (tmp_path / "a.ckpt").exists()
    with pytest.raises(lt.UsageError, match="rank 0 refused"), run_files(tmp_path, "a", _Ranks(1, REFUSED),
                                                                        resume=True, force=False):
        pass


def test_a_refusal_on_rank_0_releases_the_other_ranks(tmp_path):
    rank0 = _Ranks(0)
    with ExitStack() as held:
        held.enter_context(run_lock(tmp_path, "a"))
        with pytest.raises(RunLocked), run_files(tmp_path, "a", rank0, resume=False, force=False):
            pass
    assert rank0.broadcasts == [REFUSED]


def test_a_folder_made_for_a_run_that_fails_under_its_lock_is_removed(tmp_path, monkeypatch):
    out, made = tmp_path / "out", []
    monkeypatch.setattr(preflight, "prepare_output_dir", lambda folder: made.append(folder) or folder.mkdir())
    with pytest.raises(lt.UsageError, match="needs float images"):  # found in build, under the lock
        execute(RunConfig(**{**SETTINGS, "model": "cnn"}), out_dir=out, quiet=True)
    assert made == [out] and not out.exists()


class _Removal(Exception):
    pass


def _remove_fails(self, state):
    raise _Removal  # on every rank: a kill just after the record, before the checkpoint went


def _rank(rank: int, folder: Path, resume: bool, tag: str) -> None:
    """One of two DDP ranks running ``execute`` on ``folder/out``; what it returned or raised goes to a file."""
    import os

    import torch

    from tests.parallel.helpers import world_env

    os.environ.update(world_env(rank, 2, folder / f"rendezvous-{tag}"))
    torch.set_num_threads(1)
    try:
        outcome = execute(RunConfig(**SETTINGS, name="r", parallel="ddp"), out_dir=folder / "out", resume=resume,
                          quiet=True)
        result = {"returned": type(outcome).__name__, "record": dict(outcome)}
    except Exception as e:  # noqa: BLE001 - the test reads each rank's outcome
        result = {"raised": type(e).__name__, "message": str(e)}
    (folder / f"rank{rank}-{tag}.json").write_text(json.dumps(result, default=str))


def _two_ranks(folder: Path, tag: str, *, resume: bool) -> list[dict]:
    import torch.multiprocessing as mp

    mp.start_processes(_rank, args=(folder, resume, tag), nprocs=2, start_method="fork", join=True)
    return [json.loads((folder / f"rank{r}-{tag}.json").read_text()) for r in range(2)]


@pytest.mark.timeout(120)
def test_two_ranks_learn_rank_0s_verdict_and_never_read_a_stale_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(TrainingCheckpoint, "remove", _remove_fails)
    assert [r["raised"] for r in _two_ranks(tmp_path, "first", resume=False)] == ["_Removal"] * 2
    out = tmp_path / "out"
    before = (out / "r.json").read_bytes()
    assert (out / "r.ckpt").exists()
    reads = tmp_path / "reads"
    monkeypatch.setattr(TrainingCheckpoint, "read", lambda self: reads.write_text("read") and None)
    with ExitStack() as held:  # another process writes the run: rank 0 refuses, rank 1 stops waiting
        held.enter_context(run_lock(out, "r"))
        refused = _two_ranks(tmp_path, "refused", resume=True)
    assert refused[0]["raised"] == "RunLocked" and "rank 0 refused" in refused[1]["message"]
    finished = _two_ranks(tmp_path, "finished", resume=True)
    assert [r["returned"] for r in finished] == ["FinishedRecord"] * 2
    assert finished[0]["record"] == finished[1]["record"] == json.loads(before)
    assert not reads.exists() and not (out / "r.ckpt").exists() and (out / "r.json").read_bytes() == before
