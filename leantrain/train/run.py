"""One run, start to finish: a ``Run`` goes through its phases in one order, here and nowhere else.

    resolve    the world (launcher, ranks, device), threads, and the request's own clashes
               -- then rank 0 takes the run's lock, held to the end: a finished record is final --
    build      the data set, the model (and that it takes the data), the checkpoint to resume from, the ``auto``
               settings measured (``leantrain.tuning``) and the techniques they switch on
    prepare    the model as it will train: laid out over the ranks (FSDP shards, a pipeline's stage), then
               changed by the techniques that declare ``changes_model`` (checkpoint wrapping, precision fallbacks)
    preflight  a dry training step and the memory estimate on the *prepared* model, each rank's share
    train      the loop
    record     the JSON record (rank 0), the model file, the checkpoint removed

Used by the CLI (``leantrain train``), the experiment runner, the launched workers and ``leantrain.fit``.
``Run.trace`` lists the phases as they ran (a test pins the order). docs/ARCHITECTURE.md draws the whole.
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leantrain import data as data_sets
from leantrain import models, tuning
from leantrain.config import RunConfig, resolve_device
from leantrain.data.batches import BatchSource, DataLoaderBatches, TensorBatches, bucket_pad_index
from leantrain.data.dataset import Dataset
from leantrain.data.streaming import StreamBatches, StreamVal
from leantrain.errors import UsageError
from leantrain.fileio import write_json
from leantrain.inference.model_file import SUFFIX as MODEL_SUFFIX
from leantrain.inference.model_file import save_model
from leantrain.parallel import env as parallel_env
from leantrain.parallel.composition import check_parallel_mode
from leantrain.parallel.dist import Dist
from leantrain.parallel.env import World
from leantrain.parallel.plan import ModeHooks, ParallelPlan
from leantrain.parallel.strategy import ParallelStrategy, strategy_for
from leantrain.techniques import Technique, from_config
from leantrain.techniques.base import in_hook_order
from leantrain.techniques.precision import MixedPrecision
from leantrain.techniques.registry import check_model, switched_on
from leantrain.train import checkpoint
from leantrain.train.adapters import task_for, with_output_key
from leantrain.train.allocator import keep_freed_memory
from leantrain.train.guards import NonFiniteLoss
from leantrain.train.init_weights import load_initial_weights
from leantrain.train.loggers import open_log
from leantrain.train.loop import train
from leantrain.train.memory import check_memory
from leantrain.train.optim import make_optimizer
from leantrain.train.preflight import dry_forward, run_files
from leantrain.train.progress import Progress
from leantrain.train.record import make_record
from leantrain.train.run_identity import record_fingerprint
from leantrain.train.state import TrainState
from leantrain.train.training_state import TrainingCheckpoint
from leantrain.train.wall_clock import WallClock
from leantrain.tuning import threads_per_worker, tune_on_ranks

PHASES = ("resolve", "build", "prepare", "preflight", "train", "record")
OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


@dataclass
class RunRequest:
    """What the caller brings: the config, and optionally their own model, data, techniques and optimizer."""

    config: RunConfig
    model: nn.Module | None = None
    dataset: Dataset | None = None
    techniques: list[Technique] = field(default_factory=list)  # in addition to those the config switches on
    out_dir: Path | None = None
    resume: bool = False
    quiet: bool = False
    force: bool = False
    optimizer: OptimizerFactory | None = None  # a user's, instead of the config's named one
    extra_run_fields: dict[str, Any] = field(default_factory=dict)


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
    optimizer: OptimizerFactory | None = None,
) -> dict[str, Any]:
    """Train one run, on this process alone or as one rank of a launched world (``config.parallel``).

    ``techniques`` are objects trained with in addition to those the config switches on (``precision="bf16"``);
    a technique given both ways is a UsageError. ``auto`` settings (precision, auto-adam, threads) are
    resolved by measurement once the model is built (``leantrain.tuning``); the config keeps "auto".
    With ``out_dir``, checkpoint there each epoch and write ``<run>.json`` at the end (rank 0 only).
    With ``resume`` (or when torchrun restarted the workers), continue from ``<out_dir>/<run>.ckpt`` if
    it exists (else start afresh). A finished result or an interrupted run's checkpoint already there is
    never replaced unless ``force`` (see ``run_identity``); resuming a finished run trains nothing and returns its
    record as found, a ``FinishedRecord``. ``optimizer`` builds the optimizer over the model (a user's, from
    ``fit``) instead of the config's named one.
    """
    request = RunRequest(config, model, dataset, list(techniques or []), out_dir, resume, quiet, force, optimizer,
                         extra_run_fields or {})
    return Run(request).execute()


class Run:
    """One run's objects, filled in phase by phase: config, data, model, techniques, layout (plan), state."""

    def __init__(self, request: RunRequest):
        self.request, self.config = request, request.config
        self.trace: list[str] = []
        self.clock = WallClock()  # the record says where the wall time went (wall_clock.py)
        self.world: World = parallel_env.detect()
        self.strategy: ParallelStrategy = strategy_for(self.config.parallel)  # the mode: parallel/modes/
        self.device = resolve_device(self.config.device)
        if self.device.type == "cuda" and self.world.launched:
            self.device = torch.device("cuda", self.world.local_rank)
        # Filled in by the phases below.
        self.dist: Dist = Dist(device=self.device)  # the collectives the loop uses (an ensemble member: its own)
        self.ranks: Dist = self.dist  # every rank of the launch (the record's world)
        self.member: str | None = None  # an ensemble member's model spec
        self.dataset: Dataset
        self.model: nn.Module
        self.techniques: list[Technique] = []
        self.tuned: tuning.Tuned
        self.ckpt: TrainingCheckpoint
        self.saved: dict[str, Any] | None = None
        self.initialized_from: dict[str, Any] | None = None  # init_from's file: path, checksum, specs
        self.plan: ParallelPlan
        self.progress: Progress
        self.state: TrainState

    def execute(self) -> dict[str, Any]:
        """The phases, in their one order."""
        keep_freed_memory()  # before the first step's allocations: see allocator.py
        self.check_request()
        threads_before = torch.get_num_threads()  # restored at the end: the next run in this process starts alike
        try:
            self.clock.begin("process_group")
            with self._process_group() as dist:
                self.resolve(dist)
                # Rank 0 holds the run's lock from before the checkpoint is read to after the record is written.
                with run_files(self.request.out_dir, self.config.run_name, self.ranks, resume=self.resume,
                               force=self.request.force) as finished:
                    if finished is not None:
                        return finished  # a finished record is final: nothing trained, nothing written
                    self.build()
                    self.prepare()
                    self.preflight()
                    self.train()
                    return self.record()
        finally:
            torch.set_num_threads(threads_before)

    def dry_run(self) -> tuning.Tuned:
        """The phases up to the preflight, then stop: a candidate screened by ``leantrain advise`` (nothing is
        written, nothing trained). Returns the ``auto`` settings' choices."""
        self.check_request()
        threads_before = torch.get_num_threads()
        try:
            with self._process_group() as dist:
                self.resolve(dist)
                self.build()
                self.prepare()
                self.preflight()
                return self.tuned
        finally:
            torch.set_num_threads(threads_before)

    @property
    def resume(self) -> bool:
        return self.request.resume or self.world.restart_count > 0

    def check_request(self) -> None:
        """Clashes within the request itself, before any process group is made."""
        config, request = self.config, self.request
        if request.optimizer is not None and config.shard_optimizer:
            raise UsageError("shard_optimizer builds leantrain's own optimizer over each rank's slice of the "
                             "parameters; your own optimizer would see the whole model: pass the optimizer by name, "
                             "or drop shard_optimizer")
        check_world(config, self.world)

    def _process_group(self) -> AbstractContextManager[Dist]:
        return self.strategy.process_group(self.world, self.config, self.device)

    def _entered(self, phase: str) -> None:
        self.trace.append(phase)
        self.clock.begin(phase)

    def resolve(self, dist: Dist) -> None:
        """The ranks, threads, and what the config and the given techniques must agree on."""
        self._entered("resolve")
        config, request = self.config, self.request
        self.dist = self.ranks = dist
        check_given_once(config, request.techniques)
        if request.optimizer is not None and config.batch_size == "auto":
            raise UsageError("batch_size auto scales the learning rate to the batch it chooses, which your own "
                             "optimizer sets: give batch_size a number, or pass the optimizer by name")
        if config.loggers and request.out_dir is None:
            raise UsageError(f"log {config.log}: the logs are written beside the run's record; give an output folder "
                             "(--out, or checkpoint_dir= in lt.fit)")
        if isinstance(config.threads, int):
            torch.set_num_threads(config.threads)
        elif dist.world_size > 1:
            torch.set_num_threads(threads_per_worker(dist.world))  # "auto" too: see tune_on_ranks
        self.member = self.strategy.member_model(config, dist)

    def build(self) -> None:
        """Data, model, the state to resume from, the measured ``auto`` settings and the techniques."""
        self._entered("build")
        config, request, dist = self.config, self.request, self.dist
        ensemble = self.member is not None
        # The same on every rank (the same data and initial weights), except that ensemble members differ by rank.
        _seed_everything(config.seed + (dist.rank if ensemble else 0))
        with self.clock.part("data"):
            self.dataset = request.dataset if request.dataset is not None else data_sets.load(config.data, seed=config.seed)
        self.dataset = with_output_key(self.dataset, config.output_key)
        self.strategy.check_data(config, self.dataset)
        self.model = request.model if request.model is not None else models.build(self.member or config.model,
                                                                                  self.dataset)
        dry_forward(self.model, self.dataset, config)  # a model that does not take the data fails before any work
        check_model(config, self.model)  # and one a technique cannot work on (no blocks to checkpoint)
        # Ensemble members hold different models: each rank keeps its own checkpoint (written by its own solo loop).
        ckpt_name = f"{config.run_name}.member{dist.rank}" if ensemble else config.run_name
        out_dir = request.out_dir
        self.ckpt = TrainingCheckpoint(out_dir / f"{ckpt_name}{checkpoint.SUFFIX}" if out_dir else None, config,
                                       1 if ensemble else dist.world_size, run_fields=request.extra_run_fields,
                                       replaces=record_fingerprint(out_dir / f"{config.run_name}.json") if out_dir else None)
        self.saved = self.ckpt.read() if self.resume else None  # checked before anything is measured from it
        if config.init_from is not None:  # a resume's checkpoint holds the weights, and what they started from
            self.initialized_from = self.saved.get("initialized_from") if self.saved else load_initial_weights(
                self.model, config.init_from, self.dataset)
        self.progress = Progress(quiet=request.quiet, rank=dist.rank, label=config.run_name)
        # auto knobs -> measured (or cached, or on resume saved) choices; `config` keeps "auto" for checkpoints
        with self.clock.part("probes"):
            self.tuned = tune_on_ranks(config, dist, self.model, self.dataset, self.device,
                                       self.saved.get("autotune") if self.saved else None, self.progress.message,
                                       own_model=ensemble)
        techniques = from_config(self.tuned.config) + request.techniques
        check_parallel_mode(techniques, self.strategy.name)
        # The mode's own part in the loop (DDP's wrap, MPI's averaging, an ensemble member's vote).
        mode_hooks = self.strategy.hooks(config, self.dist, self.dataset, self.member)
        if self.strategy.trains_alone:  # the loop's sums and batches are the member's own, not over the ranks
            self.dist = Dist(device=self.device)
        self.techniques = in_hook_order(techniques + mode_hooks)

    def prepare(self) -> None:
        """The model as it will train: laid out over the ranks, then changed by the techniques that change it."""
        self._entered("prepare")
        self.plan = self.strategy.plan(self.config, self.dist)
        # A model that cannot be laid out so fails here, before the optimizer sees the parameters or a file is written.
        self.model = self.plan.prepare(self.model.to(self.device), self.dataset)
        for technique in self.techniques:
            if technique.changes_model:
                technique.prepare(self.model, self.device)

    def preflight(self) -> None:
        """A dry training step and the memory estimate, on what each rank will train."""
        self._entered("preflight")
        if not self.plan.stage_only:  # a stage's forward needs the others' (the model as built took one in build)
            dry_forward(self.model, self.dataset, self.config, self._precision(), check_data=False)
        if self.config.memory_check:  # a run that does not fit in memory fails before any file too
            self._check_memory(self.model)

    def _precision(self) -> str:
        """The precision the run trains in: the config's choice, or a MixedPrecision passed as an object."""
        return next((t.precision for t in self.techniques if isinstance(t, MixedPrecision)), "fp32")

    def _check_memory(self, model: nn.Module) -> None:
        # CPU ranks share the machine's memory; each GPU rank has its own.
        processes = self.ranks.world.local_world_size if self.device.type == "cpu" else 1
        config = self.tuned.config.replace(precision=self._precision())
        check_memory(model, self.dataset, config, self.device, processes, self.request.optimizer,
                     stage=self.plan.stage_share())

    def train(self) -> None:
        self._entered("train")
        config, request, dist, ranks = self.config, self.request, self.dist, self.ranks
        self.dataset = dataset = self.dataset.to(self.device)
        self.model.to(self.device)
        if dist.rank > 0:
            # Per-rank randomness (dropout) after the shared initialisation; rank 0 keeps the one-process stream.
            torch.manual_seed(config.seed * 100_003 + dist.rank)
        chosen = self.tuned.config  # the auto knobs' choices (batch size, ...)
        ensemble = self.member is not None
        batches = _batch_source(chosen.replace(seed=chosen.seed + ranks.rank) if ensemble else chosen, dataset,
                                self.plan.data_dist)
        optimizer = request.optimizer(self.model) if request.optimizer else make_optimizer(
            chosen, self.plan.optimized(self.model))
        self.state = state = TrainState(
            model=self.model, optimizer=optimizer, task=task_for(dataset, config.label_smoothing), device=self.device,
            base_lr=chosen.lr,  # batch_size auto scales it
            steps_per_epoch=len(batches), total_epochs=config.epochs, dist=dist, data_dist=self.plan.data_dist,
            plan=self.plan, on_nonfinite=config.on_nonfinite,
        )
        self.plan.attach(state)
        if self.saved:
            self.ckpt.restore(state, self.techniques, self.saved)
        log = open_log(config.loggers, request.out_dir, config.run_name, is_main=ranks.is_main,
                       world_size=dist.world_size, append=self.saved is not None,
                       resume_step=state.step if self.saved else None)

        def save(state: TrainState) -> None:
            log.flush()  # the steps up to this checkpoint are on disk before it is: a resume finds no gap
            self.ckpt.save(state, self.techniques, {"autotune": self.tuned.record,
                                                    "initialized_from": self.initialized_from})

        val_x = StreamVal(dataset.streams[1], self.device) if dataset.streams else dataset.x_val
        try:
            train(state, batches, val_x, dataset.y_val, techniques=self.techniques,
                  eval_batch_size=config.eval_batch_size, progress=self.progress, on_epoch_saved=save,
                  checkpoint_every=config.checkpoint_interval, log=log)
        except BaseException as e:
            for hooks in self.techniques:
                if isinstance(hooks, ModeHooks):
                    hooks.release()  # before the process group is left (see DataParallel.release)
            with contextlib.suppress(Exception):  # what stopped the run is reported (3, 143/130), not a log's full disk
                log.close()
            if isinstance(e, NonFiniteLoss):
                kept = f"the last good checkpoint is kept: {self.ckpt.path}" if self.ckpt.exists() else \
                    "no checkpoint was written before it"
                raise NonFiniteLoss(f"{e}; {kept}") from None
            raise
        log.close()

    def record(self) -> dict[str, Any]:
        """The record, written by rank 0; the model file; then the checkpoint goes."""
        self._entered("record")
        config, request, dist, ranks, state = self.config, self.request, self.dist, self.ranks, self.state
        out_dir, ckpt = request.out_dir, self.ckpt
        # A run resumed without its record fields (train --resume of an experiment's run) keeps those it started with.
        extra = {**TrainingCheckpoint.saved_run_fields(self.saved), **request.extra_run_fields, **self.plan.record()}
        if self.tuned.record:
            extra["autotune"] = self.tuned.record
        if self.initialized_from is not None:
            extra["initialized_from"] = self.initialized_from
        if self.member is not None:
            extra.update(members=ranks.gather(self.member), world_size=ranks.world_size,
                         procs_per_node=ranks.world.local_world_size, nodes=ranks.world.nodes, backend=ranks.backend,
                         launcher=ranks.world.launcher)
        record = make_record(config, state, self.dataset, self.techniques, extra, written=ranks.is_main)
        if out_dir and ckpt.path and config.save_model:
            weights = self.plan.model_state(state.model)  # every rank takes part: stages and shards are gathered
            if dist.is_main:  # each ensemble member saves its own model
                record["run"]["model_file"] = save_model(
                    out_dir / (ckpt.path.name.removesuffix(checkpoint.SUFFIX) + MODEL_SUFFIX), weights,
                    model_spec=self.member or config.model, data_spec=config.data, data=self.dataset,
                    record=f"{config.run_name}.json").name
        record["run"]["wall"] = self.clock.summary(state.records)  # to here: the record's own write is all it leaves out
        if out_dir and ranks.is_main:
            write_json(out_dir / f"{config.run_name}.json", record)
        ranks.barrier()  # the result is on disk before any checkpoint goes, and before any rank leaves the group
        ckpt.remove(state)
        return record


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


def check_given_once(config: RunConfig, given: list[Technique]) -> None:
    """A technique switched on by the config and also passed as an object would run twice: refuse it."""
    clashes = switched_on(config) & {t.name for t in given}
    if clashes:
        raise UsageError(f"{', '.join(sorted(clashes))} given both as an option and in techniques=; use one")


def _batch_source(config: RunConfig, dataset: Dataset, dist: Dist) -> BatchSource:
    """Every rank shuffles alike and takes its slice of each global batch (see data/batches.py)."""
    if dataset.streams is not None:  # read batch by batch (larger than memory, or several inputs)
        return StreamBatches(dataset.streams[0], config.batch, dist.device, seed=config.seed, rank=dist.rank,
                             world_size=dist.world_size)
    if config.padding_trimmed_by:
        return TensorBatches(dataset.x_train, dataset.y_train, config.batch, seed=config.seed, rank=dist.rank,
                             world_size=dist.world_size, pad_index=bucket_pad_index(dataset, config.padding_trimmed_by),
                             buckets=config.length_buckets)
    source = TensorBatches if config.loader == "tensor" else DataLoaderBatches
    return source(dataset.x_train, dataset.y_train, config.batch, shuffle=True, seed=config.seed,
                  rank=dist.rank, world_size=dist.world_size)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
