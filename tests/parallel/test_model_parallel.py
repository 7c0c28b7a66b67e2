"""Pipeline stages, FSDP2 shards and the data x pipeline hybrid train as one process does on the same batches.

Each step's whole-model weights (gathered from the stages or shards by the run's own checkpoint code) are
compared with a one-process run's; every test forks its workers and rendezvous through a file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from leantrain.config import RunConfig
from leantrain.errors import UsageError
from leantrain.inference.model_file import load_model
from leantrain.techniques import Technique
from leantrain.train.run import execute
from tests.parallel.helpers import world_env

# Four hidden blocks of 64: the stages get two each; no dropout, so one process and N ranks draw nothing.
BASE = {"model": "mlp:hidden=64,depth=4", "data": "healthcare-sim:n=640", "epochs": 2, "lr": 3e-3,
        "device": "cpu", "seed": 5, "batch_size": 64}


class WholeModelTrace(Technique):
    """The whole model's weights after every optimizer step, as the run's plan gathers them (on rank 0)."""

    name = "whole-model-trace"

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def after_optimizer_step(self, state: Any) -> None:
        whole = state.plan.model_state(state.model)  # every rank takes part; rank 0 gets the whole
        self.steps.append({k: v.detach().clone() for k, v in whole.items()})


def _worker(rank: int, world_size: int, folder: Path, config: dict[str, Any], out_dir: Path | None) -> None:
    os.environ.update(world_env(rank, world_size, folder / "rendezvous"))
    torch.set_num_threads(1)
    trace = WholeModelTrace()
    try:
        record = execute(RunConfig.from_dict(config), techniques=[trace], quiet=True, out_dir=out_dir)
        result: dict[str, Any] = {"steps": trace.steps, "record": record}
    except UsageError as e:
        result = {"error": str(e)}
    torch.save(result, folder / f"rank{rank}.pt")


def run_workers(world_size: int, folder: Path, config: dict[str, Any], out_dir: Path | None = None) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_worker, args=(world_size, folder, config, out_dir), nprocs=world_size,
                       start_method="fork", join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def run_single(config: dict[str, Any]) -> dict:
    torch.set_num_threads(1)
    trace = WholeModelTrace()
    record = execute(RunConfig.from_dict(config), techniques=[trace], quiet=True)
    return {"steps": trace.steps, "record": record}


def _assert_same_training(single: dict, main: dict, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert len(main["steps"]) == len(single["steps"]) > 10
    for step, (got, want) in enumerate(zip(main["steps"], single["steps"])):
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol, msg=f"step {step + 1}: {name}")
    for got, want in zip(main["record"]["epochs"], single["record"]["epochs"]):
        for key in ("train_loss", "val_loss", "val_acc", "train_acc"):
            assert got[key] == pytest.approx(want[key], rel=1e-5), key
        assert got["train_samples"] == want["train_samples"]


@pytest.fixture(scope="module")
def single() -> dict:
    return run_single(BASE)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_two_pipeline_stages_equal_one_process(tmp_path, single, schedule):
    ranks = run_workers(2, tmp_path, {**BASE, "parallel": "pipeline", "schedule_pp": schedule, "microbatches": 4})
    _assert_same_training(single, ranks[0])
    run = ranks[0]["record"]["run"]
    assert run["pipeline"]["blocks_per_stage"] == [2, 2] and run["pipeline"]["schedule"] == schedule
    assert run["params"] == single["record"]["run"]["params"]  # the whole model's, not a stage's
    # Every rank records the same loss (the last stage's, sent to the first).
    assert ranks[1]["record"]["epochs"][-1]["train_loss"] == ranks[0]["record"]["epochs"][-1]["train_loss"]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("parallel, batch", [("pipeline", 64), ("fsdp", 32)])
def test_activation_checkpointing_composes_with_stages_and_shards(tmp_path, single, parallel, batch):
    # A stage keeps the model's `blocks` convention, FSDP shards each block: both recompute exactly.
    ranks = run_workers(2, tmp_path, {**BASE, "parallel": parallel, "batch_size": batch, "checkpointing": "sqrt"})
    _assert_same_training(single, ranks[0], atol=1e-5)
    assert "ckpt-sqrt" in ranks[0]["record"]["run"]["techniques"]
    # The model's 4 (sharded) blocks in √4 = 2 segments; a stage holds 2 of them, in √2 ≈ 1 segment
    segments = {"fsdp": [["blocks.0", "blocks.1"], ["blocks.2", "blocks.3"]], "pipeline": [["blocks.0", "blocks.1"]]}
    assert ranks[0]["record"]["epochs"][-1]["checkpoint_segments"] == segments[parallel]


@pytest.mark.timeout(90)
def test_fsdp_on_two_ranks_equals_one_process_with_the_doubled_batch(tmp_path, single):
    ranks = run_workers(2, tmp_path, {**BASE, "parallel": "fsdp", "batch_size": 32})
    # FSDP's reduce-scatter divides each rank's gradient before adding them (DDP adds, then divides): a few ulps,
    # which Adam's first, normalised step turns into ~4e-6 on a weight whose gradient is nearly zero. It stays.
    _assert_same_training(single, ranks[0], atol=1e-5)


@pytest.mark.timeout(120)
def test_hybrid_dp2xpp2_on_four_processes_equals_one_process(tmp_path, single):
    ranks = run_workers(4, tmp_path, {**BASE, "parallel": "dp2xpp2", "batch_size": 32, "schedule_pp": "gpipe"})
    # Each replica's micro-batch gradients are summed in another order than one process's: a few ulps, which Adam's
    # first, normalised step turns into ~4e-6 on a weight whose gradient is nearly zero (seen on an AMD EPYC).
    _assert_same_training(single, ranks[0], atol=1e-5)
    assert ranks[0]["record"]["run"]["pipeline"]["replicas"] == 2


@pytest.mark.timeout(90)
@pytest.mark.parametrize("parallel", ["pipeline", "fsdp"])
def test_each_rank_holds_at_most_six_tenths_of_the_model_state(tmp_path, single, parallel):
    ranks = run_workers(2, tmp_path, {**BASE, "parallel": parallel, "epochs": 1})
    whole = single["record"]["epochs"][0]["state_bytes"]
    per_rank = ranks[0]["record"]["epochs"][0]["state_bytes_per_rank"]
    assert len(per_rank) == 2 and max(per_rank) <= 0.6 * whole, (per_rank, whole)


@pytest.mark.timeout(90)
def test_a_two_stage_runs_model_file_loads_into_one_process(tmp_path, single):
    out = tmp_path / "out"
    ranks = run_workers(2, tmp_path, {**BASE, "parallel": "pipeline", "save_model": True}, out_dir=out)
    record = ranks[0]["record"]
    saved = load_model(out / record["run"]["model_file"])  # the one-process model class, strict load
    final = single["steps"][-1]
    for name, tensor in saved.model.state_dict().items():
        torch.testing.assert_close(tensor, final[name], rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("config, message", [
    ({"model": "mlp:hidden=8,depth=1", "parallel": "pipeline"}, "2 pipeline stages need at least 2 blocks"),
    ({"model": "nbow", "data": "imdb-sim:n=200", "parallel": "pipeline"}, "has no pipeline_parts"),
])
def test_a_model_that_cannot_be_staged_fails_on_every_rank_before_any_file(tmp_path, config, message):
    out = tmp_path / "out"
    ranks = run_workers(2, tmp_path, {**BASE, **config}, out_dir=out)
    assert all(message in rank["error"] for rank in ranks)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("config, message", [
    ({"parallel": "pipeline", "batch_size": 30}, "not a multiple of microbatches 4"),
    ({"parallel": "dp2xpp2", "procs": 3}, "dp2xpp2 is 2 x 2 = 4 processes, but procs is 3"),
    ({"parallel": "pipeline", "procs": 4, "microbatches": 2}, "1f1b needs at least one micro-batch per stage"),
    ({"parallel": "fsdp", "complexity": "match"}, "fsdp does not compose with: complexity"),
    ({"parallel": "pipeline", "precision": "fp16"}, "precision fp16 with parallel pipeline"),
    ({"parallel": "dp2xpp1"}, "is not one of"),
])
def test_bad_parallel_settings_are_one_line_errors(config, message):
    with pytest.raises(UsageError, match=message):
        RunConfig.from_dict({**BASE, **config})


class FailOnRank(Technique):
    """Raises on one rank at one step: a stage that dies mid-schedule."""

    name = "fail-on-rank"

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def before_step(self, state: Any) -> None:
        if state.dist.rank == self.rank and state.step == self.step:
            raise RuntimeError("stage failure injected by the test")


def _failing_worker(rank: int, world_size: int, folder: Path, config: dict[str, Any]) -> None:
    os.environ.update(world_env(rank, world_size, folder / "rendezvous"))
    torch.set_num_threads(1)
    execute(RunConfig.from_dict(config), techniques=[FailOnRank(rank=1, step=3)], quiet=True)


@pytest.mark.timeout(60)
def test_a_failing_stage_makes_every_rank_exit_nonzero_within_the_timeout(tmp_path):
    config = {**BASE, "parallel": "pipeline", "dist_timeout": 5}
    context = mp.start_processes(_failing_worker, args=(2, tmp_path, config), nprocs=2, start_method="fork",
                                 join=False)
    for process in context.processes:  # the survivor's receive times out: nobody is killed from outside
        process.join(timeout=40)
    assert [p.exitcode for p in context.processes] != [None, None]
    assert all(p.exitcode not in (None, 0) for p in context.processes), [p.exitcode for p in context.processes]


class StopAtStep(Technique):
    name = "stop-at-step"

    def __init__(self, step: int) -> None:
        self.step = step

    def before_step(self, state: Any) -> None:
        if state.step == self.step:
            raise KeyboardInterrupt  # every rank alike, as a Ctrl-C reaching the whole job


def _resumable_worker(rank: int, world_size: int, folder: Path, config: dict[str, Any], out_dir: Path,
                      stop_at: int | None) -> None:
    os.environ.update(world_env(rank, world_size, folder / "rendezvous"))
    torch.set_num_threads(1)
    trace = WholeModelTrace()
    extra: list[Technique] = [StopAtStep(stop_at)] if stop_at else []
    try:
        record = execute(RunConfig.from_dict(config), techniques=[trace, *extra], quiet=True, out_dir=out_dir,
                         resume=stop_at is None)
    except KeyboardInterrupt:
        record = None
    torch.save({"steps": trace.steps, "record": record}, folder / f"rank{rank}.pt")


@pytest.mark.timeout(120)
# FSDP covers the per-rank sums of a data-parallel epoch (DDP keeps them the same way); a DDP case hung once
# in a forked worker of a loaded full suite, and is left out until that is understood.
@pytest.mark.parametrize("parallel, batch", [("pipeline", 64), ("fsdp", 32)])
def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(tmp_path, single, parallel, batch):
    config = {**BASE, "parallel": parallel, "batch_size": batch, "checkpoint_every": "3"}

    def workers(folder: Path, stop_at: int | None) -> list[dict]:
        folder.mkdir(parents=True)
        mp.start_processes(_resumable_worker, args=(2, folder, config, tmp_path / "out", stop_at), nprocs=2,
                           start_method="fork", join=True)
        return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]

    total = len(single["steps"])  # 16: 8 steps an epoch
    cut = workers(tmp_path / "cut", stop_at=11)  # mid epoch 2, after the step-9 checkpoint (every 3 steps)
    assert cut[0]["record"] is None and len(cut[0]["steps"]) == 11
    resumed = workers(tmp_path / "resumed", stop_at=None)[0]
    assert len(resumed["steps"]) == total - 9  # from the checkpoint on
    final, want = resumed["steps"][-1], single["steps"][-1]
    for name in want:
        torch.testing.assert_close(final[name], want[name], rtol=1e-5, atol=1e-5)
    for got, expected in zip(resumed["record"]["epochs"], single["record"]["epochs"]):
        assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-5)
