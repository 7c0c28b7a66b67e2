"""DDP on N processes equals one process on the same global batch: every step's parameters, every epoch's loss."""
import pytest
import torch

from leantrain.config import RunConfig
from leantrain.errors import UsageError
from leantrain.techniques import AdaptiveAccumulation, MixedPrecision
from tests.parallel.helpers import run_single, run_workers

BASE = {"model": "mlp:hidden=32", "data": "healthcare-sim:n=1280", "epochs": 2, "lr": 3e-3, "device": "cpu",
        "seed": 3}


def _compare(single, ranks, rtol, atol=0.0):
    assert len(single["steps"]) == len(ranks[0]["steps"]) > 10
    for rank in ranks:  # every rank holds the same weights after every step
        for got, want in zip(rank["steps"], ranks[0]["steps"]):
            assert torch.equal(got, want)
    for step, (got, want) in enumerate(zip(ranks[0]["steps"], single["steps"])):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=f"step {step + 1}")
    for got, want in zip(ranks[0]["record"]["epochs"], single["record"]["epochs"]):
        for key in ("train_loss", "val_loss", "val_acc"):
            assert got[key] == pytest.approx(want[key], rel=max(rtol, 1e-6)), key
        assert got["train_samples"] == want["train_samples"]


@pytest.mark.timeout(60)
def test_two_ranks_equal_one_process_with_the_doubled_batch(tmp_path):
    single = run_single({**BASE, "batch_size": 64})
    ranks = run_workers(2, tmp_path, {**BASE, "batch_size": 32, "parallel": "ddp"})
    _compare(single, ranks, rtol=1e-5, atol=1e-7)
    run = ranks[0]["record"]["run"]
    assert (run["parallel"], run["world_size"], run["backend"]) == ("ddp", 2, "gloo")
    assert len(ranks[0]["record"]["epochs"][0]["peak_mem_bytes_per_rank"]) == 2


@pytest.mark.timeout(60)
def test_two_ranks_equal_one_process_under_adaptive_accumulation(tmp_path):
    # Small, noisy batches: the noise scale is far above k_max, so both runs take k up 2 -> 4 -> 8 by the same
    # steps; equal k, equal lr, equal samples per step make equal updates.
    techniques = lambda: [AdaptiveAccumulation(k_min=2, k_max=8, update_every=2)]  # noqa: E731
    single = run_single({**BASE, "batch_size": 16}, techniques)
    ranks = run_workers(2, tmp_path, {**BASE, "batch_size": 8, "parallel": "ddp"}, techniques)
    _compare(single, ranks, rtol=1e-5, atol=1e-7)
    epochs = [e["accum_steps_mean"] for e in ranks[0]["record"]["epochs"]]
    assert epochs == [e["accum_steps_mean"] for e in single["record"]["epochs"]] and max(epochs) > 2


@pytest.mark.timeout(60)
def test_two_ranks_track_one_process_under_bf16(tmp_path):
    # bf16 rounds each rank's weight gradient (a sum over its 32 samples) before DDP adds the two halves, where
    # one process rounds the sum over 64: a few bf16 ulps (2**-8 relative) per step, which Adam's normalised
    # update carries into the weights at about lr * 1e-2 per step.
    techniques = lambda: [MixedPrecision("bf16")]  # noqa: E731
    single = run_single({**BASE, "batch_size": 64}, techniques)
    ranks = run_workers(2, tmp_path, {**BASE, "batch_size": 32, "parallel": "ddp"}, techniques)
    assert len(single["steps"]) == len(ranks[0]["steps"])
    drift = max((a - b).abs().max().item() for a, b in zip(ranks[0]["steps"], single["steps"]))
    assert drift < 3e-3 * len(single["steps"]) * 0.1
    last = ranks[0]["record"]["epochs"][-1]
    assert last["val_loss"] == pytest.approx(single["record"]["epochs"][-1]["val_loss"], rel=2e-2)


def test_a_checkpoint_resumes_only_on_the_world_size_that_wrote_it(tmp_path):
    from leantrain.config import RunConfig
    from leantrain.errors import UsageError
    from leantrain.train import checkpoint
    from leantrain.train.run import execute

    config = RunConfig.from_dict({**BASE, "batch_size": 64, "epochs": 1})
    execute(config, out_dir=tmp_path, quiet=True)
    (record,) = tmp_path.glob("*.json")
    # a finished run keeps no checkpoint; write one as a 2-worker run would have, then resume alone
    path = tmp_path / f"{config.run_name}{checkpoint.SUFFIX}"
    saved = {"config": config.to_dict(), "epoch": 0, "step": 0, "samples_seen": 0, "accum_steps": 1, "records": [],
             "model": {}, "optimizer": {}, "techniques": {}, "technique_labels": [], "rng": checkpoint.rng_states(),
             "world_size": 2, "rng_per_rank": [checkpoint.rng_states()] * 2, "step_losses": [], "progress": None,
             "guards": {}}
    checkpoint.save(path, saved)
    record.unlink()
    with pytest.raises(UsageError, match="written by 2 worker"):
        execute(config, out_dir=tmp_path, resume=True, quiet=True)


@pytest.mark.timeout(90)
def test_complexity_matching_rewraps_ddp_and_still_equals_one_process(tmp_path):
    # Widening rebuilds the layers at an epoch end: DDP must hook the new parameters (else they would train
    # apart on each rank). Decisions follow the validation loss, reduced over all samples, so every rank
    # and the one-process run widen at the same epochs.
    from leantrain.techniques import ComplexityMatching

    techniques = lambda: [ComplexityMatching(start_width=4, max_width=16, min_delta=10.0, patience=1)]  # noqa: E731
    config = {**BASE, "model": "mlp", "epochs": 3}
    single = run_single({**config, "batch_size": 64}, techniques)
    ranks = run_workers(2, tmp_path, {**config, "batch_size": 32, "parallel": "ddp"}, techniques)
    widths = [e["hidden_width"] for e in ranks[0]["record"]["epochs"]]
    assert widths == [e["hidden_width"] for e in single["record"]["epochs"]] and widths[-1] > widths[0]
    _compare(single, ranks, rtol=1e-5, atol=1e-7)


@pytest.mark.timeout(60)
def test_ddp_knobs_change_speed_not_results(tmp_path):
    # Small buckets (several all-reduces per step), a static graph and copied gradients: the same weights.
    single = run_single({**BASE, "batch_size": 64})
    knobs = {"ddp_bucket_mb": 0.01, "ddp_static_graph": True, "ddp_grad_as_bucket_view": False}
    ranks = run_workers(2, tmp_path, {**BASE, "batch_size": 32, "parallel": "ddp", **knobs})
    _compare(single, ranks, rtol=1e-5, atol=1e-7)
    assert "ddp(bucket_cap_mb=0.01,static_graph,gradient_as_bucket_view=False)" in ranks[0]["record"]["run"]["techniques"]


@pytest.mark.timeout(60)
def test_an_fp16_all_reduce_stays_close_to_one_process(tmp_path):
    # Gradients rounded to fp16 before averaging: ~0.05% each, but one too small for fp16 becomes 0, and Adam then
    # moves that weight by up to one lr (3e-3) less. So the weights stay within a few lr of the exact run's.
    # (PyTorch refuses its bf16 hook on gloo: CUDA and NCCL only.)
    single = run_single({**BASE, "batch_size": 64})
    ranks = run_workers(2, tmp_path, {**BASE, "batch_size": 32, "parallel": "ddp", "ddp_compress": "fp16"})
    _compare(single, ranks, rtol=5e-2, atol=1e-2)
    with pytest.raises(UsageError, match="ddp_compress bf16 needs CUDA"):
        RunConfig(parallel="ddp", procs=2, ddp_compress="bf16", device="cpu").validated()
    assert "ddp(compress=fp16)" in ranks[0]["record"]["run"]["techniques"]
