"""One run, start to finish: build (or take) data, model, optimizer and techniques; train; return the record.

Used by the CLI (``leantrain train``), the experiment runner, and ``leantrain.fit`` on a user's model.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leantrain import data as data_sets
from leantrain import models, tuning
from leantrain.config import RunConfig, hybrid_shape, parallel_mode, resolve_device
from leantrain.data.batches import BatchSource, DataLoaderBatches, TensorBatches, bucket_pad_index
from leantrain.data.dataset import Dataset
from leantrain.data.streaming import StreamBatches, StreamVal
from leantrain.errors import UsageError
from leantrain.fileio import write_json
from leantrain.inference.model_file import SUFFIX as MODEL_SUFFIX
from leantrain.inference.model_file import save_model
from leantrain.parallel import env as parallel_env
from leantrain.parallel.ddp import DataParallel
from leantrain.parallel.dist import Dist, process_group
from leantrain.parallel.ensemble import EnsembleMember, member_spec
from leantrain.parallel.env import World
from leantrain.parallel.launch import cores_available
from leantrain.parallel.mpi import MpiDataParallel, ShardedOptimizerPlan, mpi_group, with_master_from_rank0
from leantrain.parallel.plan import ParallelPlan
from leantrain.techniques import Technique, from_config
from leantrain.techniques.base import in_hook_order
from leantrain.techniques.registry import check_parallel_mode
from leantrain.train import checkpoint
from leantrain.train.adapters import task_for
from leantrain.train.allocator import keep_freed_memory
from leantrain.train.guards import NonFiniteLoss
from leantrain.train.loggers import open_log
from leantrain.train.loop import train
from leantrain.train.memory import check_memory
from leantrain.train.metrics import peak_matmul_flops, training_utilisation
from leantrain.train.optim import make_optimizer
from leantrain.train.preflight import dry_forward, run_files
from leantrain.train.progress import Progress
from leantrain.train.record import SCHEMA, environment, summarize
from leantrain.train.state import TrainState
from leantrain.train.training_state import TrainingCheckpoint


def execute(
    config: RunConfig,
    *,
    model: nn.Module | None = None,
    dataset: Dataset | None = None,
    techniques: list[Technique] | None = None,
    out_dir: Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    extra_run_fields: dict[str, Any] | None = None,
    force: bool = False,
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
) -> dict[str, Any]:
    """Train one run, on this process alone or as one rank of a launched world (``config.parallel``).

    ``techniques`` are objects trained with in addition to those the config switches on (``precision="bf16"``);
    a technique given both ways is a UsageError. ``auto`` settings (precision, auto-adam, threads) are
    resolved by measurement once the model is built (``leantrain.tuning``); the config keeps "auto".
    With ``out_dir``, checkpoint there each epoch and write ``<run>.json`` at the end (rank 0 only).
    With ``resume`` (or when torchrun restarted the workers), continue from ``<out_dir>/<run>.ckpt`` if
    it exists (else start afresh). A finished result or an interrupted run's checkpoint already there is
    never replaced unless ``force`` (see ``run_identity``). ``optimizer`` builds the optimizer over the model
    (a user's, from ``fit``) instead of the config's named one.
    """
    keep_freed_memory()  # before the first step's allocations: see allocator.py
    if optimizer is not None and config.shard_optimizer:
        raise UsageError("shard_optimizer builds leantrain's own optimizer over each rank's slice of the parameters; "
                         "your own optimizer would see the whole model: pass the optimizer by name, or drop "
                         "shard_optimizer")
    world = parallel_env.detect()
    check_world(config, world)
    device = resolve_device(config.device)
    if device.type == "cuda" and world.launched:
        device = torch.device("cuda", world.local_rank)
    if config.parallel == "mpi":
        group = mpi_group(world, device)
    else:
        group = process_group(with_master_from_rank0(world), config.backend, device, config.dist_timeout)
    threads_before = torch.get_num_threads()  # restored at the end: the next run in this process starts alike
    try:
        with group as dist:
            return _execute(config, dist, device, model, dataset, techniques, out_dir,
                            resume or world.restart_count > 0, quiet, extra_run_fields or {}, force, optimizer)
    finally:
        torch.set_num_threads(threads_before)


def check_world(config: RunConfig, world: World) -> None:
    """The launch and the configuration must agree; say how to launch when they do not."""
    if config.parallel == "none" and world.world_size > 1:
        raise UsageError(f"launched as {world.world_size} processes ({world.launcher}) but parallel is none: "
                         "add --parallel ddp, or launch one process")
    if config.parallel != "none" and not world.launched:
        raise UsageError(f"--parallel {config.parallel} needs worker processes: add --procs N, or launch with "
                         f"torchrun --nproc-per-node N -m leantrain train ..., mpirun -n N or srun")
    if config.procs is not None and world.launched and world.local_world_size != config.procs:
        raise UsageError(f"procs is {config.procs} but {world.launcher} started {world.local_world_size} "
                         "processes on this node; drop --procs when launching with torchrun/mpirun/srun")


def _execute(
    config: RunConfig, dist: Dist, device: torch.device, model: nn.Module | None, dataset: Dataset | None,
    techniques: list[Technique] | None, out_dir: Path | None, resume: bool, quiet: bool, extra: dict[str, Any],
    force: bool = False, optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
) -> dict[str, Any]:
    given = list(techniques or [])
    _check_given_once(config, given)
    if optimizer is not None and config.batch_size == "auto":
        raise UsageError("batch_size auto scales the learning rate to the batch it chooses, which your own optimizer "
                         "sets: give batch_size a number, or pass the optimizer by name")
    if config.loggers and out_dir is None:
        raise UsageError(f"log {config.log}: the logs are written beside the run's record; give an output folder "
                         "(--out, or checkpoint_dir= in lt.fit)")
    if isinstance(config.threads, int):
        torch.set_num_threads(config.threads)
    elif dist.world_size > 1:
        torch.set_num_threads(_threads_per_worker(dist.world))  # "auto" too: see _tune
    ensemble = config.parallel == "ensemble"
    member = member_spec(config.model, config.members, dist.rank, dist.world_size) if ensemble else config.model
    # The same on every rank (the same data and initial weights), except that ensemble members differ by rank.
    _seed_everything(config.seed + (dist.rank if ensemble else 0))
    dataset = dataset if dataset is not None else data_sets.load(config.data, seed=config.seed)
    if ensemble and dataset.task != "classification":
        raise UsageError(f"--parallel ensemble combines class probabilities; {config.data} is a {dataset.task} task")
    model = model if model is not None else models.build(member, dataset)
    dry_forward(model, dataset, config)  # a model that does not fit the data fails before any work or file
    # Ensemble members hold different models: each rank keeps its own checkpoint (written by its own solo loop).
    ckpt_name = f"{config.run_name}.member{dist.rank}" if ensemble else config.run_name
    ckpt = TrainingCheckpoint(out_dir / f"{ckpt_name}{checkpoint.SUFFIX}" if out_dir else None, config,
                              1 if ensemble else dist.world_size)
    saved = ckpt.read() if resume else None  # checked before anything is measured or built from it
    progress = Progress(quiet=quiet, rank=dist.rank, label=config.run_name)
    # auto knobs -> measured (or cached, or on resume saved) choices; `config` keeps "auto" for checkpoints
    tuned = _tune(config, dist, model, dataset, device, saved.get("autotune") if saved else None, progress.message,
                  own_model=ensemble)
    techniques = from_config(tuned.config) + given
    check_parallel_mode(techniques, parallel_mode(config.parallel))
    if config.parallel == "ddp":
        techniques.append(DataParallel(bucket_cap_mb=config.ddp_bucket_mb, static_graph=config.ddp_static_graph,
                                       gradient_as_bucket_view=config.ddp_grad_as_bucket_view,
                                       compress=config.ddp_compress))
    elif config.parallel == "mpi":
        techniques.append(MpiDataParallel())
    if ensemble:
        techniques.append(EnsembleMember(dist, member, dataset.x_val.to(device), dataset.y_val.cpu(),
                                         config.eval_batch_size, config.seed))
        # A member trains alone: the loop's sums and batches are its own, not reduced or sharded over ranks.
        dist, ranks = Dist(device=device), dist
    else:
        ranks = dist
    techniques = in_hook_order(techniques)
    if config.memory_check:  # a run that does not fit in memory fails before any file too (CPU ranks share it)
        check_memory(model, dataset, tuned.config, device, ranks.world.local_world_size if device.type == "cpu" else 1,
                     optimizer)
    # The layout over the ranks (FSDP shards, pipeline stages), before the optimizer sees the parameters;
    # a model that cannot be laid out so fails here too, before any file is written.
    plan = make_plan(config, dist)
    model = plan.prepare(model.to(device), dataset)
    with run_files(out_dir if ranks.is_main else None, config.run_name, resume=resume, force=force):
        return _train_and_record(config, dist, ranks, device, model, dataset, techniques, out_dir, ckpt, saved,
                                 tuned, progress, member if ensemble else None, extra, plan, optimizer)


def make_plan(config: RunConfig, dist: Dist) -> ParallelPlan:
    """How this run lays the model out over its ranks (see leantrain/parallel/plan.py)."""
    # Imported here: FSDP2 and pipelining need a newer torch than one-process runs do.
    from leantrain.parallel.fsdp import FsdpPlan
    from leantrain.parallel.pipeline import PipelinePlan

    mode = parallel_mode(config.parallel)
    if config.shard_optimizer:
        return ShardedOptimizerPlan(dist)
    if mode == "fsdp":
        return FsdpPlan(dist)
    if mode == "pipeline":
        return PipelinePlan(dist, 1, dist.world_size, config.microbatches, config.schedule_pp)
    if mode == "hybrid":
        return PipelinePlan(dist, *hybrid_shape(config.parallel), config.microbatches, config.schedule_pp)
    return ParallelPlan(dist)


def _train_and_record(
    config: RunConfig, dist: Dist, ranks: Dist, device: torch.device, model: nn.Module, dataset: Dataset,
    techniques: list[Technique], out_dir: Path | None, ckpt: TrainingCheckpoint, saved: dict[str, Any] | None,
    tuned: Any, progress: Progress, member: str | None, extra: dict[str, Any], plan: ParallelPlan,
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
) -> dict[str, Any]:
    ensemble = member is not None
    dataset = dataset.to(device)
    model.to(device)
    if dist.rank > 0:
        # Per-rank randomness (dropout) after the shared initialisation; rank 0 keeps the one-process stream.
        torch.manual_seed(config.seed * 100_003 + dist.rank)

    task = task_for(dataset, config.label_smoothing)
    chosen = tuned.config  # the auto knobs' choices (batch size, ...)
    batches = _batch_source(chosen.replace(seed=chosen.seed + ranks.rank) if ensemble else chosen, dataset,
                            plan.data_dist)
    state = TrainState(
        model=model,
        optimizer=optimizer(model) if optimizer else make_optimizer(tuned.config, plan.optimized(model)),
        task=task,
        device=device,
        base_lr=tuned.config.lr,  # batch_size auto scales it
        steps_per_epoch=len(batches),
        total_epochs=config.epochs,
        dist=dist,
        data_dist=plan.data_dist,
        plan=plan,
        on_nonfinite=config.on_nonfinite,
    )
    plan.attach(state)
    if saved:
        ckpt.restore(state, techniques, saved)

    def save(state: TrainState) -> None:
        ckpt.save(state, techniques, {"autotune": tuned.record})

    log = open_log(config.loggers, out_dir, config.run_name, is_main=ranks.is_main, world_size=dist.world_size,
                   append=saved is not None)
    try:
        train(
            state, batches, StreamVal(dataset.streams[1], device) if dataset.streams else dataset.x_val, dataset.y_val,
            techniques=techniques, eval_batch_size=config.eval_batch_size, progress=progress, on_epoch_saved=save,
            checkpoint_every=config.checkpoint_interval, log=log,
        )
    except NonFiniteLoss as e:
        kept = f"the last good checkpoint is kept: {ckpt.path}" if ckpt.exists() else \
            "no checkpoint was written before it"
        raise NonFiniteLoss(f"{e}; {kept}") from None
    finally:
        log.close()

    extra = {**extra, **plan.record()}
    if tuned.record:
        extra = {**extra, "autotune": tuned.record}
    if ensemble:
        extra = {**extra, "members": ranks.gather(member), "world_size": ranks.world_size,
                 "procs_per_node": ranks.world.local_world_size, "nodes": ranks.world.nodes, "backend": ranks.backend,
                 "launcher": ranks.world.launcher}
    record = make_record(config, state, dataset, techniques, extra, written=ranks.is_main)
    if out_dir and ckpt.path and config.save_model:
        weights = plan.model_state(state.model)  # every rank takes part: stages and shards are gathered
        if dist.is_main:  # each ensemble member saves its own model
            record["run"]["model_file"] = save_model(
                out_dir / (ckpt.path.name.removesuffix(checkpoint.SUFFIX) + MODEL_SUFFIX), weights,
                model_spec=member or config.model, data_spec=config.data, data=dataset,
                record=f"{config.run_name}.json").name
    if out_dir and ranks.is_main:
        write_json(out_dir / f"{config.run_name}.json", record)
    ranks.barrier()  # the result is on disk before any checkpoint goes, and before any rank leaves the group
    ckpt.remove(state)
    return record


def _check_given_once(config: RunConfig, given: list[Technique]) -> None:
    """A technique switched on by the config and also passed as an object would run twice: refuse it."""
    switched_on = {t.name for t in from_config(config)} | ({"precision"} if config.precision == tuning.AUTO else set())
    clashes = switched_on & {t.name for t in given}
    if clashes:
        raise UsageError(f"{', '.join(sorted(clashes))} given both as an option and in techniques=; use one")


def _tune(config: RunConfig, dist: Dist, model: nn.Module, dataset: Dataset, device: torch.device,
          saved: dict[str, Any] | None, say: Callable[[str], None], own_model: bool = False) -> tuning.Tuned:
    """The config with its auto knobs resolved (see leantrain.tuning).

    Several ranks: a rank's auto threads are its share of the node's cores (its sibling ranks are not
    "other processes" to leave cores for). Ranks never probe at once: they would compete for the cores
    and might choose differently. Data parallel (one model): rank 0 alone measures precision and Adam
    kernel and broadcasts its record; the other ranks take it and never probe. An ensemble
    (``own_model``: a different model per rank): each member measures its own model, one rank at a time.
    """
    if dist.world_size <= 1 or not tuning.auto_knobs(config):
        return tuning.resolve(config, model, dataset, device, saved=saved, say=say)
    share = {"choice": _threads_per_worker(dist.world), "cpus": cores_available(),
             "workers": dist.world.local_world_size, "source": "per-worker share"}
    if own_model:
        tuned: tuning.Tuned | None = None
        for turn in range(dist.world_size):
            failed = False
            if dist.rank == turn:
                try:
                    tuned = tuning.resolve(config, model, dataset, device, saved=saved, threads=share, say=say)
                except BaseException:
                    failed = True
                    dist.any(True)  # the others stop waiting: this rank's error is the job's
                    raise
            if dist.any(failed):
                raise UsageError(f"rank {turn} failed while choosing its auto settings; see its error")
        assert tuned is not None
        return tuned
    if dist.is_main:
        try:
            tuned = tuning.resolve(config, model, dataset, device, saved=saved, threads=share, say=say,
                                   data_ranks=dist.world_size)
        except BaseException:
            dist.broadcast(None)  # the others stop waiting: rank 0's error is the job's
            raise
        dist.broadcast(tuned.record)
        return tuned
    record = dist.broadcast(None)
    if record is None:
        raise UsageError("rank 0 failed while choosing the auto settings; see its error")
    return tuning.resolve(config, model, dataset, device, saved=record, saved_from="rank 0", threads=share)


def _threads_per_worker(world: World) -> int:
    return max(1, cores_available() // max(1, world.local_world_size))


def _batch_source(config: RunConfig, dataset: Dataset, dist: Dist) -> BatchSource:
    """Every rank shuffles alike and takes its slice of each global batch (see data/batches.py)."""
    if dataset.streams is not None:  # read batch by batch (larger than memory, or several inputs)
        return StreamBatches(dataset.streams[0], config.batch, dist.device, seed=config.seed, rank=dist.rank,
                             world_size=dist.world_size)
    if config.length_buckets:
        return TensorBatches(dataset.x_train, dataset.y_train, config.batch, seed=config.seed, rank=dist.rank,
                             world_size=dist.world_size, pad_index=bucket_pad_index(dataset))
    source = TensorBatches if config.loader == "tensor" else DataLoaderBatches
    return source(dataset.x_train, dataset.y_train, config.batch, shuffle=True, seed=config.seed,
                  rank=dist.rank, world_size=dist.world_size)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)


def make_record(
    config: RunConfig, state: TrainState, dataset: Dataset, techniques: list[Technique], extra: dict[str, Any],
    written: bool = True,
) -> dict[str, Any]:
    flops = models.flops_per_sample(state.model)
    peak = peak_matmul_flops(state.device, state.precision.compute_dtype) if flops else None
    # Rates are global over the ranks, so the capacity is every rank's peak (each measured at its thread count).
    capacity = peak * state.dist.world_size if peak else None
    for epoch in state.records:
        # Sequence models declare FLOPs per token, the others per sample; a resized model, per epoch.
        rate = epoch.get("train_tokens_per_s") or epoch.get("samples_per_s")
        epoch_flops = epoch.get("flops_per_sample") or flops
        epoch["utilisation"] = (training_utilisation(epoch_flops, rate, capacity)
                                if epoch_flops and capacity and rate else None)
    task = state.task
    return {
        "schema": SCHEMA,
        "run": {
            "name": config.run_name,
            "model": config.model,
            "data": dataset.name,
            "data_spec": config.data,
            "task": dataset.task,
            "metric": task.metric,
            "higher_is_better": task.higher_is_better,
            "techniques": [t.describe() for t in techniques],
            "parallel": config.parallel,
            "world_size": state.dist.world_size,
            "procs_per_node": state.dist.world.local_world_size,
            "nodes": state.dist.world.nodes,
            "launcher": state.dist.world.launcher,
            "backend": state.dist.backend,
            "seed": config.seed,
            "params": sum(p.numel() for p in state.model.parameters()),
            "flops_per_sample": flops,
            "train_samples": len(dataset.x_train),
            "val_samples": len(dataset.x_val),
            "config": config.to_dict(),
            **extra,
        },
        "env": environment(state.device, peak, by_dtype=written),
        "epochs": state.records,
        "summary": summarize(state.records, task.metric, config.target, task.higher_is_better),
    }
